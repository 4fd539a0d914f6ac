"""bfloat16 greedy output is the same in every mode, under every message interleaving, run after run.

The reference is the base model decoding one row at a time (each token's forward a lone row over
a plain cache), so equality also shows that no segment shape or cache layout changed a token.
"""

from __future__ import annotations

import random
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from common.models.modeling import load_slice
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateRequest
from tests.support.local_ring import LocalRing
from tests.support.tiny_models import make_perturbed_copy, make_tiny_pair

BF16 = torch.bfloat16
TREES = DraftSettings(top_k=3, fill_nodes=10, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
NEW_TOKENS = 24


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"bf16-{request.param}")
    base, _ = make_tiny_pair(root, family=request.param, seed=6)
    return base, make_perturbed_copy(base, root / "near", noise=0.05, seed=1)


def _prompts() -> list[list[int]]:
    rng = random.Random(11)
    return [[rng.randrange(3, 300) for _ in range(n)] for n in (1, 63, 64, 130)]


@lru_cache(maxsize=2)
def _model(base: Path):
    return load_slice(base, None, with_embedding=True, with_head=True, dtype=BF16)


def _row_by_row(base: Path, prompt: list[int]) -> list[int]:
    """Greedy tokens of the bf16 base model fed one token per forward, stopping at EOS like the ring."""
    model = _model(base)
    cache, out, token = model.new_cache(), [], None
    for position, token in enumerate(prompt):
        hidden = model(torch.tensor([token]), torch.tensor([position]), None, cache)
    for position in range(len(prompt), len(prompt) + NEW_TOKENS):
        token = int(model.greedy_tokens(hidden)[0])
        out.append(token)
        if token in model.spec.eos_token_ids:
            break
        hidden = model(torch.tensor([token]), torch.tensor([position]), None, cache)
    return out


@pytest.mark.parametrize(("mode", "stages", "interleave_seed"), [
    ("ar", 1, 0), ("chunk", 2, 1), ("pipedec", 2, 3), ("flowspec", 2, 4), ("flowspec", 4, 8),
])
def test_every_mode_and_timing_gives_the_row_by_row_tokens(pair, mode, stages, interleave_seed):
    base, near = pair
    ring = LocalRing(base, near, stages, settings=TREES, interleave_seed=interleave_seed, dtype=BF16)
    for prompt in _prompts():
        reply = ring.generate(prompt, max_new_tokens=NEW_TOKENS, mode=mode)
        assert reply.ok, reply.error
        assert list(reply.token_ids) == _row_by_row(base, prompt), f"{mode} diverged on a {len(prompt)}-token prompt"


def test_repeated_flowspec_runs_agree_with_redrafting_trees(pair):
    base, near = pair
    settings = replace(TREES, expansion="redraft", grow_levels=3)
    prompt = _prompts()[3]
    outputs = {
        tuple(LocalRing(base, near, 3, settings=settings, interleave_seed=seed, dtype=BF16)
              .generate(prompt, max_new_tokens=NEW_TOKENS).token_ids)
        for seed in range(3)
    }
    assert outputs == {tuple(_row_by_row(base, prompt))}


@pytest.mark.parametrize(("stages", "interleave_seed"), [(2, 5), (3, 9)])
def test_concurrent_requests_give_their_solo_tokens(pair, stages, interleave_seed):
    """Several requests in flight at once, every mode among them: each output is bitwise its solo run."""
    base, near = pair
    rng = random.Random(stages)
    modes = ["flowspec", "ar", "chunk", "pipedec", "flowspec"]
    requests = [
        GenerateRequest(prompt="", prompt_ids=tuple(rng.randrange(3, 300) for _ in range(rng.randrange(1, 90))),
                        max_new_tokens=rng.randrange(8, NEW_TOKENS), mode=mode)
        for mode in modes
    ]
    ring = LocalRing(base, near, stages, settings=TREES, interleave_seed=interleave_seed, dtype=BF16)
    most = 0

    def sample_then_done(clients: list[str]) -> bool:
        nonlocal most
        most = max(most, len(ring.stages[-1].requests))
        return all(ring.final(c) is not None for c in clients)

    clients = [ring.submit(r) for r in requests]
    ring.deliver(lambda: sample_then_done(clients))
    for request, client in zip(requests, clients, strict=True):
        reply = ring.final(client)
        assert reply is not None and reply.ok, reply
        solo = _row_by_row(base, list(request.prompt_ids))[: request.max_new_tokens]
        assert list(reply.token_ids) == solo, f"{request.mode} diverged beside other requests"
    assert most >= 2, "segments of several requests were in one stage at once"
