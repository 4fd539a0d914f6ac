"""The ring's cores in one process, under random message interleavings: lossless against HF generate."""

from __future__ import annotations

import random

import pytest
import torch

from common.speculation.modes import DraftSettings
from tests.support.local_ring import LocalRing
from tests.support.reference import greedy_reference
from tests.support.tiny_models import make_tiny_pair

SMALL_TREES = DraftSettings(top_k=3, fill_nodes=10, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request, tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp(request.param), family=request.param, seed=3)


def _prompts(count: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randrange(1, 90))] for _ in range(count)]


@pytest.mark.parametrize("stages", [1, 2, 4])
def test_greedy_equals_base_model_generate(pair, stages):
    base, draft = pair
    ring = LocalRing(base, draft, stages, settings=SMALL_TREES, interleave_seed=stages)
    for prompt in _prompts(8, 300, seed=stages):
        reply = ring.generate(prompt, max_new_tokens=24)
        assert reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, prompt, 24)


def test_self_draft_accepts_whole_paths(tmp_path):
    """A draft identical to the base accepts more than one token per step and stays lossless."""
    base, _ = make_tiny_pair(tmp_path, seed=5)
    from dataclasses import replace

    # Random tiny models have flat distributions: best-first growth goes wide; re-drafting goes deep.
    ring = LocalRing(base, base, 2, settings=replace(SMALL_TREES, expansion="redraft"), interleave_seed=1)
    prompt = [5, 6, 7, 8, 9]
    reply = ring.generate(prompt, max_new_tokens=30)
    assert list(reply.token_ids) == greedy_reference(base, prompt, 30)
    assert reply.stats["tokens_per_step"] > 1.5


@pytest.mark.parametrize("reduced_vocab", [False, True])
@pytest.mark.parametrize(("mode", "expansion", "levels"), [
    ("ar", "grow", 1), ("chunk", "grow", 1), ("pipedec", "grow", 1), ("flowspec", "grow", 1),
    ("flowspec", "grow", 3), ("flowspec", "redraft", 1),
])
def test_every_mode_is_lossless(tmp_path, mode, expansion, levels, reduced_vocab):
    """With the full draft vocabulary, and with the draft proposing only half of it."""
    from dataclasses import replace

    from tests.support.tiny_models import make_perturbed_copy

    base, _ = make_tiny_pair(tmp_path, seed=8)
    near = make_perturbed_copy(base, tmp_path / "near", noise=0.05, seed=2)
    settings = replace(SMALL_TREES, expansion=expansion, grow_levels=levels)
    draft_ids = torch.arange(0, 320, 2) if reduced_vocab else None
    ring = LocalRing(base, near, 2, settings=settings, interleave_seed=4, draft_ids=draft_ids)
    rounds = []
    for prompt in _prompts(4, 300, seed=9):
        reply = ring.generate(prompt, max_new_tokens=20, mode=mode)
        assert reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, prompt, 20)
        assert reply.stats["mode"] == mode
        rounds.append(reply.stats["rounds"] / max(reply.stats["steps"], 1))
    if mode in ("ar", "chunk"):
        assert all(r == 1 for r in rounds)  # every verification ends its round
    else:
        assert min(rounds) < 1  # rounds continue across verifications
    if mode == "ar":
        assert reply.stats["accepted_per_step"] == 0
