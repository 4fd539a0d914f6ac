"""Several requests' segments in one forward: each output bitwise equal to its solo run, fp32 and bf16, every mode.

The solo runs go through the same ring code one request at a time (no forward is shared); the
concurrent runs must share forwards in every stage and in the verifier, or the test proves nothing.
"""

from __future__ import annotations

import random

import pytest
import torch

from common.speculation.modes import DraftSettings
from common.wire.client import GenerateRequest
from tests.support.local_ring import LocalRing
from tests.support.tiny_models import make_perturbed_copy, make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=10, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
MODES = ("flowspec", "ar", "chunk", "pipedec")


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    base, _ = make_tiny_pair(root, seed=5)
    return base, make_perturbed_copy(base, root / "near", noise=0.05, seed=2), request.param


def _requests(seed: int) -> list[GenerateRequest]:
    rng = random.Random(seed)
    return [GenerateRequest(prompt="", prompt_ids=tuple(rng.randrange(3, 300) for _ in range(rng.randrange(1, 40))),
                            max_new_tokens=rng.randrange(8, 20), mode=MODES[i % len(MODES)])
            for i in range(8)]


def test_batched_requests_equal_their_solo_runs_in_every_mode(pair):
    base, near, dtype = pair
    requests = _requests(seed=4)
    alone = LocalRing(base, near, 2, settings=TREES, dtype=dtype)
    solo = [alone.generate_many([r])[0] for r in requests]
    assert not any(alone.batched(name) for name in alone.forwards), "one request at a time shares no forward"
    ring = LocalRing(base, near, 2, settings=TREES, dtype=dtype, interleave_seed=6)
    together = ring.generate_many(requests)
    for request, a, b in zip(requests, solo, together, strict=True):
        assert a.ok and b.ok, (a.error, b.error)
        assert b.token_ids == a.token_ids, request.mode
        assert b.stats["mode"] == request.mode
    for name in ("stage-1", "stage-2", "verifier"):
        assert ring.batched(name) > 0, f"{name} never forwarded two requests' rows together"
        assert max(f.requests for f in ring.forwards[name]) >= 2
