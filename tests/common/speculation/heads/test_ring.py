"""The ring drafting with a head: greedy output stays the base model's, sampling the base model's own draws."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.speculation.heads import save_head
from common.speculation.heads.model import new_head
from common.speculation.modes import DraftSettings
from services.launcher import client_for, plan_local, start, stop
from tests.support.local_ring import LocalRing
from tests.support.reference import greedy_reference
from tests.support.sampling import assert_sampled_like_ar
from tests.support.tiny_models import make_tiny_model

TREES = DraftSettings(top_k=3, fill_nodes=10, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)


@pytest.fixture(scope="module")
def base_and_head(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ring-head")
    base = make_tiny_model(root / "base", family="qwen2", num_layers=4, seed=6)
    save_head(new_head(base, intermediate_size=48, draft_ids=None, dtype=torch.float32, seed=2), root / "head",
              dtype=torch.float32)
    return base, root / "head"


def _prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 300) for _ in range(rng.randrange(1, 70))] for _ in range(count)]


@pytest.mark.parametrize("stages", [1, 2, 4])
def test_greedy_with_a_head_equals_base_generate(base_and_head, stages) -> None:
    base, head = base_and_head
    ring = LocalRing(base, None, stages, settings=TREES, interleave_seed=stages, draft_head=head)
    for prompt in _prompts(5, seed=stages):
        reply = ring.generate(prompt, max_new_tokens=20)
        assert reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, prompt, 20)
        verifier = reply.stats["services"]["verifier"]
        # fp32 features of the prompt and of every accepted path: 64 values of 4 bytes per token
        assert verifier["feature_bytes"] == 64 * 4 * (len(prompt) + reply.stats["accepted_per_step"]
                                                      * reply.stats["steps"] + reply.stats["steps"])
        assert reply.stats["feature_bytes_per_step"] > 0
        assert verifier["rows"] > 2 * reply.stats["steps"]  # the head's trees reached the verifier


@pytest.mark.parametrize(("mode", "expansion"), [("chunk", "grow"), ("pipedec", "grow"), ("flowspec", "redraft"),
                                                 ("ar", "grow")])
def test_every_mode_with_a_head_is_lossless(base_and_head, mode, expansion) -> None:
    base, head = base_and_head
    ring = LocalRing(base, None, 2, settings=replace(TREES, expansion=expansion), interleave_seed=5, draft_head=head)
    for prompt in _prompts(3, seed=11):
        reply = ring.generate(prompt, max_new_tokens=16, mode=mode)
        assert reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, prompt, 16)
    assert (reply.stats["feature_bytes_per_step"] == 0) == (mode == "ar")


def test_a_reduced_draft_vocabulary_keeps_the_output_exact(base_and_head, tmp_path) -> None:
    base, _ = base_and_head
    ids = torch.arange(3, 300, 3)  # most of the base's tokens are never proposed
    save_head(new_head(base, intermediate_size=32, draft_ids=ids, dtype=torch.float32, seed=4), tmp_path / "h")
    ring = LocalRing(base, None, 2, settings=TREES, interleave_seed=7, draft_head=tmp_path / "h")
    for prompt in _prompts(4, seed=21):
        reply = ring.generate(prompt, max_new_tokens=16)
        assert reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, prompt, 16)


def test_sampling_with_a_head_gives_ars_tokens(base_and_head) -> None:
    """Drafting with the head changes how many tokens a step yields, never which: ar's draws, seed for seed."""
    base, head = base_and_head
    ring = LocalRing(base, None, 2, settings=TREES, interleave_seed=3, wire=False, draft_head=head)
    _, rows_per_step = assert_sampled_like_ar(ring, [[5, 9, 14, 3], [60, 61, 62, 63, 64]], 10, 0.8, range(4),
                                              modes=("flowspec",))
    assert rows_per_step > 2  # the head's trees reached the verifier (this random head is seldom accepted)


def test_the_process_ring_drafts_with_a_head(base_and_head, tmp_path) -> None:
    base, head = base_and_head
    spec = plan_local(base, None, 2, draft_settings=TREES, threads=1, draft_head=head)
    start(spec, tmp_path / "run")
    try:
        with client_for(spec, 120) as client:
            for prompt in _prompts(6, seed=4):
                reply = client.generate("", prompt_ids=tuple(prompt), max_new_tokens=16)
                assert reply.ok, reply.error
                assert list(reply.token_ids) == greedy_reference(base, prompt, 16)
                assert reply.stats["services"]["verifier"]["feature_bytes"] > 0
    finally:
        stop(tmp_path / "run")


def test_up_refuses_a_head_of_another_base(base_and_head, tmp_path) -> None:
    from typer.testing import CliRunner

    from services.cli.cluster import _head_dir
    from services.cli.main import app

    base, head = base_and_head
    assert _head_dir(str(head), base) == head.resolve()
    other = make_tiny_model(tmp_path / "other", family="qwen2", num_layers=4, seed=9)
    result = CliRunner().invoke(app, ["up", "--base", str(other), "--draft-head", str(head), "--stages", "1",
                                      "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "was trained for another base" in result.output and "embedding matrices differ" in result.output
    missing = CliRunner().invoke(app, ["up", "--base", str(other), "--draft-head", "no-such-head",
                                       "--run-dir", str(tmp_path / "run")])
    assert missing.exit_code == 1 and "cannot read head config" in missing.output
