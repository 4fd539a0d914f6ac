"""The statistical check that sampled output follows the base model: a chi-square on the first three tokens."""

from __future__ import annotations

from collections import Counter

import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM

PROMPT, TEMPERATURE, RUNS = [5, 9, 14, 3], 0.25, 1500


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


def assert_sampling_follows_base(ring, base) -> None:
    """``ring`` (a LocalRing) samples 3 tokens ``RUNS`` times; their frequencies must fit the base's exact ones."""
    exact = exact_triples(base, PROMPT, TEMPERATURE)
    seen = Counter(tuple(ring.generate(PROMPT, 3, temperature=TEMPERATURE, seed=s).token_ids) for s in range(RUNS))
    bins = [t for t, p in sorted(exact.items(), key=lambda kv: -kv[1]) if p * RUNS >= 8]
    assert len(bins) >= 6, "the test needs several well-populated bins to have power"
    observed = [seen[t] for t in bins] + [RUNS - sum(seen[t] for t in bins)]
    expected = [exact[t] * RUNS for t in bins] + [RUNS * (1 - sum(exact[t] for t in bins))]
    assert chisquare(observed, expected).pvalue > 1e-3
