"""Several requests' segments in one forward: each output bitwise equal to its solo run, fp32 and bf16, every mode.

The solo runs go through the same ring code one request at a time (no forward is shared); the
concurrent runs must share forwards in every stage and in the verifier, or the test proves nothing; the
drafter's shared draft levels are asserted where three flowspec requests draft ahead together (the cancel test).
"""

from __future__ import annotations

import random

import pytest
import torch

from common.speculation.modes import DraftSettings
from common.wire.client import GenerateRequest
from tests.support.local_ring import LocalRing
from tests.support.reference import greedy_reference
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
    assert ring.forwards["drafter"], "flowspec requests drafted ahead through the drafter's shared step"
    for name in ("stage-1", "stage-2", "verifier"):
        assert ring.batched(name) > 0, f"{name} never forwarded two requests' rows together"
        assert max(f.requests for f in ring.forwards[name]) >= 2


def test_a_cancel_while_the_drafter_batches_frees_the_request_and_the_others_finish(pair):
    base, near, dtype = pair
    if dtype != torch.float32:
        pytest.skip("one dtype suffices: the cancel path does not depend on it")
    ring = LocalRing(base, near, 2, settings=TREES, dtype=dtype, interleave_seed=3)
    prompts = [(5, 6, 7, 8), (9, 10, 11), (40, 41, 42, 43, 44)]
    clients = [ring.submit(GenerateRequest(prompt="", prompt_ids=p, max_new_tokens=n, mode="flowspec"))
               for p, n in zip(prompts, (200, 12, 12), strict=True)]
    ring.deliver(lambda: any(f.requests == 3 for f in ring.forwards["drafter"]))
    assert ring.final(clients[0]) is None, "the long request is still running"
    ring.cancel(clients[0])
    assert ring.final(clients[0]).code == "cancelled"
    ring.deliver(lambda: all(ring.final(c) is not None for c in clients[1:]))
    for prompt, client in zip(prompts[1:], clients[1:], strict=True):
        reply = ring.final(client)
        assert reply.ok and list(reply.token_ids) == greedy_reference(base, list(prompt), 12)
    ring.deliver(lambda: False)  # every EndRequest lands
    assert ring.held_requests() == {name: set() for name in ring.held_requests()}
