"""Several requests in the ring at once (cores in one process): each output equals its solo run."""

from __future__ import annotations

import random

import pytest

from common.cluster.settings import Admission
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateRequest
from common.wire.ring import Segment
from tests.support.local_ring import LocalRing
from tests.support.reference import greedy_reference
from tests.support.tiny_models import make_perturbed_copy, make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=10, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
MODES = ["flowspec", "ar", "chunk", "pipedec", "flowspec", "flowspec"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base, _ = make_tiny_pair(root, seed=7)
    return base, make_perturbed_copy(base, root / "near", noise=0.05, seed=1)


def _requests(count: int, seed: int) -> list[GenerateRequest]:
    rng = random.Random(seed)
    return [
        GenerateRequest(prompt="", prompt_ids=tuple(rng.randrange(3, 300) for _ in range(rng.randrange(1, 60))),
                        max_new_tokens=rng.randrange(4, 24), mode=MODES[i % len(MODES)])
        for i in range(count)
    ]


def _no_state_left(ring: LocalRing) -> None:
    assert ring.held_requests() == {name: set() for name in ring.held_requests()}


@pytest.mark.parametrize(("stages", "interleave"), [(2, 0), (3, 5)])
def test_concurrent_greedy_outputs_equal_each_solo_run(models, stages, interleave):
    base, near = models
    ring = LocalRing(base, near, stages, settings=TREES, interleave_seed=interleave)
    requests = _requests(6, seed=stages)
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
        assert list(reply.token_ids) == greedy_reference(base, list(request.prompt_ids), request.max_new_tokens)
        assert reply.stats["mode"] == request.mode
    assert most >= 2, "segments of several requests were in one stage at once"
    assert ring.batched(ring.stages[-1].name) > 0 and ring.batched("verifier") > 0, "no forward was shared"
    ring.deliver(lambda: False)  # let every EndRequest land
    _no_state_left(ring)


def test_requests_past_the_in_flight_limit_queue_and_still_match(models):
    base, near = models
    ring = LocalRing(base, near, 2, settings=TREES, admission=Admission(max_in_flight=2, max_queued=8))
    requests = _requests(5, seed=11)
    replies = ring.generate_many(requests)
    for request, reply in zip(requests, replies, strict=True):
        assert reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, list(request.prompt_ids), request.max_new_tokens)


def test_cancel_mid_decode_frees_state_everywhere_and_the_next_request_runs(models):
    base, near = models
    ring = LocalRing(base, near, 2, settings=TREES, admission=Admission(max_in_flight=1))
    long = ring.submit(GenerateRequest(prompt="", prompt_ids=(5, 6, 7), max_new_tokens=200))
    waiting = ring.submit(GenerateRequest(prompt="", prompt_ids=(9, 10), max_new_tokens=6))
    ring.deliver(lambda: ring.scheduler.jobs.get("r1") is not None and len(ring.scheduler.jobs["r1"].output) >= 3)
    assert ring.final(waiting) is None and ring.scheduler.queued == 1
    ring.cancel(long)
    assert ring.final(long).code == "cancelled"
    ring.deliver(lambda: ring.final(waiting) is not None)
    assert list(ring.final(waiting).token_ids) == greedy_reference(base, [9, 10], 6)
    ring.deliver(lambda: False)
    _no_state_left(ring)


def test_a_fault_frees_the_failed_request_and_others_finish(models):
    base, near = models
    ring = LocalRing(base, near, 2, settings=TREES)
    good = _requests(2, seed=3)
    clients = [ring.submit(r) for r in good]
    ring.inject("stage-2", Segment(request_id="r1", round=0, epoch=0, seq=99, phase="prefill", first=0,
                                   tokens=(1,), parents=(), positions=(0,)))
    ring.deliver(lambda: all(ring.final(c) is not None for c in clients))
    first, second = (ring.final(c) for c in clients)
    assert not first.ok and "stage-2" in first.error and first.code == "failed"
    assert second.ok and list(second.token_ids) == greedy_reference(base, list(good[1].prompt_ids),
                                                                    good[1].max_new_tokens)
    ring.deliver(lambda: False)
    _no_state_left(ring)


def test_a_short_request_finishes_while_a_long_prompt_is_still_prefilling(models):
    """Prefill chunks of a long prompt take turns with another request's segments at every hop: the short
    request's whole reply arrives before the long one's first token (its prefill's end), and both equal their
    solo runs."""
    base, near = models
    ring = LocalRing(base, near, 2, settings=TREES, interleave_seed=3, prefill_chunk=8)
    long_prompt = [3 + (7 * i) % 290 for i in range(400)]  # 50 chunks
    short_prompt = [5, 6, 7]
    long_client = ring.submit(GenerateRequest(prompt="", prompt_ids=tuple(long_prompt), max_new_tokens=4))
    short_client = ring.submit(GenerateRequest(prompt="", prompt_ids=tuple(short_prompt), max_new_tokens=6))
    order: list[str] = []

    def watch(r: LocalRing) -> None:
        for name, client in (("long", long_client), ("short", short_client)):
            if name not in order and r.received[client]:
                order.append(name)
        if r.final(short_client) is not None and "short done" not in order:
            order.append("short done")

    ring.after_each = watch
    ring.deliver(lambda: ring.final(long_client) is not None and ring.final(short_client) is not None)
    assert order.index("short done") < order.index("long"), order
    for client, prompt, new in ((long_client, long_prompt, 4), (short_client, short_prompt, 6)):
        reply = ring.final(client)
        assert reply is not None and reply.ok, reply
        assert list(reply.token_ids) == greedy_reference(base, prompt, new)
