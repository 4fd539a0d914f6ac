"""Replay in the ring's cores, in one process: a service that loses its state mid-request (killed and
restarted) leaves the output equal to an undisturbed run, and what was streamed is never taken back."""

from __future__ import annotations

import pytest

from common.speculation.modes import DraftSettings
from common.wire.client import GenerateChunk, GenerateReply, GenerateRequest
from tests.support.local_ring import LocalRing
from tests.support.reference import greedy_reference, long_running_prompt
from tests.support.tiny_models import make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=10, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), family="llama", seed=3)


@pytest.mark.parametrize("mode", ["flowspec", "pipedec", "chunk", "ar"])
@pytest.mark.parametrize("victim", ["stage-1", "stage-2", "drafter", "verifier"])
def test_a_restarted_service_leaves_the_output_unchanged(pair, victim, mode):
    base, draft = pair
    prompt = long_running_prompt(base, NEW_TOKENS)
    ring = LocalRing(base, draft, 2, settings=TREES, interleave_seed=7)
    client = ring.submit(GenerateRequest(prompt="", prompt_ids=tuple(prompt), max_new_tokens=NEW_TOKENS, mode=mode,
                                         stream=True))
    job = next(iter(ring.scheduler.jobs.values()))
    ring.deliver(lambda: len(job.output) >= 6)  # midway: tokens committed and streamed
    committed = list(job.output)
    ring.restart(victim)
    assert set(ring.scheduler.jobs) == {"r1~1"}  # the same request, resumed under a new ring id
    ring.deliver(lambda: ring.final(client) is not None)
    reply = ring.final(client)
    assert reply.ok, reply.error
    assert list(reply.token_ids) == greedy_reference(base, prompt, NEW_TOKENS)
    assert list(reply.token_ids[: len(committed)]) == committed
    streamed = [t for m in ring.received[client] if isinstance(m, GenerateChunk) for t in m.token_ids]
    assert streamed == list(reply.token_ids)  # every chunk only appended
    assert {m.request_id for m in ring.received[client] if isinstance(m, GenerateChunk)} == {"r1"}
    assert reply.stats["request_id"] == "r1" and reply.stats["replays"] == 1
    assert all(not held for held in ring.held_requests().values())  # the first attempt ended everywhere


def test_every_request_in_the_ring_is_replayed(pair):
    base, draft = pair
    prompts = [long_running_prompt(base, NEW_TOKENS), [5, 6, 7, 8, 9], [40, 41]]
    ring = LocalRing(base, draft, 2, settings=TREES, interleave_seed=3)
    clients = [ring.submit(GenerateRequest(prompt="", prompt_ids=tuple(p), max_new_tokens=NEW_TOKENS))
               for p in prompts]
    ring.deliver(lambda: any(len(j.output) >= 3 for j in ring.scheduler.jobs.values()))
    ring.restart("stage-2")
    ring.deliver(lambda: all(ring.final(c) is not None for c in clients))
    for client, prompt in zip(clients, prompts, strict=True):
        reply = ring.final(client)
        assert isinstance(reply, GenerateReply) and reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, prompt, NEW_TOKENS)


@pytest.mark.parametrize("victim", ["stage-1", "verifier"])
def test_a_sampled_request_restarted_midway_draws_what_an_undisturbed_run_draws(pair, victim):
    """Each token's draw is keyed by the seed and its position, so the replay continues the same sample."""
    base, draft = pair
    prompt = long_running_prompt(base, NEW_TOKENS)
    request = GenerateRequest(prompt="", prompt_ids=tuple(prompt), max_new_tokens=NEW_TOKENS, temperature=0.9, seed=5)
    undisturbed = LocalRing(base, draft, 2, settings=TREES, interleave_seed=2).generate_many([request])[0]
    ring = LocalRing(base, draft, 2, settings=TREES, interleave_seed=7)
    client = ring.submit(request)
    job = next(iter(ring.scheduler.jobs.values()))
    ring.deliver(lambda: len(job.output) >= 6)
    ring.restart(victim)
    ring.deliver(lambda: ring.final(client) is not None)
    reply = ring.final(client)
    assert reply.ok and undisturbed.ok, (reply.error, undisturbed.error)
    assert reply.stats["replays"] == 1
    assert list(reply.token_ids) == list(undisturbed.token_ids)
    assert list(reply.token_ids) != greedy_reference(base, prompt, NEW_TOKENS)  # a sample, not the greedy output
