"""Checks that sampled output is the base model's: a chi-square of the first three tokens against its exact
probabilities, and token-for-token equality with the ring's own ar (one token a step, the same draws)."""

from __future__ import annotations

from collections import Counter

import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM

from common.wire.client import GenerateReply, GenerateRequest

PROMPT, TEMPERATURE, RUNS = [5, 9, 14, 3], 0.25, 1500
BATCH = 20  # requests handed to the ring at once, as many as the scheduler takes (4 in flight, 16 queued)


def exact_triples(base, prompt: list[int], temperature: float, top: int = 8) -> dict[tuple[int, ...], float]:
    """Probabilities of the likeliest 3-token continuations under the base model alone."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()

    def probs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(torch.tensor([ids])).logits[0, -1].double() / temperature, -1)

    out: dict[tuple[int, ...], float] = {}
    p1 = probs(prompt)
    for t1 in p1.topk(top).indices.tolist():
        p2 = probs([*prompt, t1])
        for t2 in p2.topk(top).indices.tolist():
            p3 = probs([*prompt, t1, t2])
            for t3 in p3.topk(top).indices.tolist():
                out[(t1, t2, t3)] = float(p1[t1] * p2[t2] * p3[t3])
    return out


def assert_sampling_follows_base(ring, base, mode: str = "ar") -> None:
    """``ring`` (a LocalRing) samples 3 tokens ``RUNS`` times in ``mode``; their frequencies must fit the base's
    exact ones. ar by default: the cheapest path through the same verifier draws, and the drafting modes give
    ar's tokens seed for seed (``assert_sampled_like_ar``)."""
    exact = exact_triples(base, PROMPT, TEMPERATURE)
    asks = [GenerateRequest(prompt="", prompt_ids=tuple(PROMPT), max_new_tokens=3, temperature=TEMPERATURE, seed=s,
                            mode=mode)
            for s in range(RUNS)]
    replies = [r for i in range(0, RUNS, BATCH) for r in ring.generate_many(asks[i:i + BATCH])]
    assert all(r.ok for r in replies), next(r.error for r in replies if not r.ok)
    seen = Counter(tuple(r.token_ids) for r in replies)
    bins = [t for t, p in sorted(exact.items(), key=lambda kv: -kv[1]) if p * RUNS >= 8]
    assert len(bins) >= 6, "the test needs several well-populated bins to have power"
    observed = [seen[t] for t in bins] + [RUNS - sum(seen[t] for t in bins)]
    expected = [exact[t] * RUNS for t in bins] + [RUNS * (1 - sum(exact[t] for t in bins))]
    assert chisquare(observed, expected).pvalue > 1e-3


def assert_sampled_like_ar(ring, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                           seeds: range, modes: tuple[str, ...] = ("flowspec", "chunk")) -> tuple[float, float]:
    """Each of ``modes`` gives, seed for seed, the tokens of the ring's own ar: run alone and all at once.
    Returns the share of flowspec's tokens that came from accepted drafts and the rows its verifier checked
    per step (so a caller can check that trees were verified and drafts accepted at all)."""
    asks = [(tuple(p), s) for p in prompts for s in seeds]

    def ask(prompt: tuple[int, ...], seed: int, mode: str) -> GenerateRequest:
        return GenerateRequest(prompt="", prompt_ids=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed, mode=mode)

    reference = [tuple(ring.generate_many([ask(p, s, "ar")])[0].token_ids) for p, s in asks]
    assert len(set(reference)) > len(asks) // 2, "the seeds must give different samples"
    drafted = rows = steps = 0
    for mode in modes:
        alone: list[GenerateReply] = [ring.generate_many([ask(p, s, mode)])[0] for p, s in asks]
        together = ring.generate_many([ask(p, s, mode) for p, s in asks])
        for i, (a, t) in enumerate(zip(alone, together, strict=True)):
            assert a.ok and t.ok, (mode, i, a.error, t.error)
            assert tuple(a.token_ids) == reference[i], (mode, i, "alone")
            assert tuple(t.token_ids) == reference[i], (mode, i, "all at once")
            if mode == "flowspec":
                drafted += round(a.stats["accepted_per_step"] * a.stats["steps"])
                rows += a.stats["services"]["verifier"]["rows"]
                steps += a.stats["steps"]
    return drafted / sum(len(r) for r in reference), rows / max(steps, 1)
