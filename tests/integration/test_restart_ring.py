"""A service SIGKILLed mid-request on the real process ring: its supervisor restarts it, the scheduler
replays the request from its committed context, and the client's stream continues to the same output
as an undisturbed run."""

from __future__ import annotations

import json
import os
import signal

import pytest

from common.cluster.settings import Timeouts
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateChunk, GenerateReply
from services.launcher import client_for, plan_local, start, stop
from tests.support.reference import greedy_reference, long_running_prompt
from tests.support.tiny_models import make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
NEW_TOKENS = 40
SLOW_LINK_MS = 3.0  # every hop's emulated latency: slow enough to kill the service mid-request


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), family="llama", seed=5)


def service_pid(client, name: str) -> int:
    return next(s.pid for s in client.status().services if s.name == name)


def stream_killing(client, victim: str, prompt: list[int],
                   after_tokens: int) -> tuple[list[int], str, GenerateReply]:
    """Stream a greedy request; SIGKILL ``victim`` once ``after_tokens`` tokens arrived. Returns the tokens
    and the text streamed, and the final reply."""
    pid = service_pid(client, victim)
    streamed: list[int] = []
    text = ""
    reply = None
    for msg in client.stream("", prompt_ids=tuple(prompt), max_new_tokens=NEW_TOKENS, link_latency_ms=SLOW_LINK_MS):
        if isinstance(msg, GenerateChunk):
            before = len(streamed)
            streamed.extend(msg.token_ids)
            text += msg.text
            if before < after_tokens <= len(streamed):
                os.kill(pid, signal.SIGKILL)
        else:
            reply = msg
    assert isinstance(reply, GenerateReply)
    assert len(streamed) >= after_tokens, "the request ended before the kill"
    return streamed, text, reply


def test_kill_stage_drafter_verifier_mid_request(pair, tmp_path):
    base, draft = pair
    spec = plan_local(base, draft, 2, draft_settings=TREES, threads=1, timeouts=Timeouts(poll_interval_s=0.2))
    run = tmp_path / "run"
    start(spec, run)
    prompt = long_running_prompt(base, NEW_TOKENS)
    expected = greedy_reference(base, prompt, NEW_TOKENS)
    victims = ["stage-2", "drafter", "verifier"]
    try:
        with client_for(spec, 120) as client:
            for victim in victims:
                old_pid = service_pid(client, victim)
                streamed, text, reply = stream_killing(client, victim, prompt, after_tokens=4)
                assert reply.ok, reply.error
                assert list(reply.token_ids) == expected
                assert streamed == expected  # nothing taken back, nothing lost
                assert text == reply.text  # the text too: nothing sent twice
                assert reply.stats["replays"] == 1
                assert service_pid(client, victim) != old_pid and client.status().ready
            after = client.generate("", prompt_ids=tuple(prompt), max_new_tokens=NEW_TOKENS)
            assert after.ok and list(after.token_ids) == expected and after.stats["replays"] == 0
    finally:
        stopped = stop(run)
    assert len(stopped) == 5
    replayed = [e for e in _events(run / "logs" / "scheduler.log") if e["event"] == "request_replayed"]
    assert [e["service"] for e in replayed] == victims
    for victim in victims:
        restarts = [e for e in _events(run / "logs" / f"{victim}-supervisor.log") if e["event"] == "service_restarted"]
        assert len(restarts) == 1


def test_past_the_recovery_bound_the_client_gets_a_clear_error(pair, tmp_path):
    base, draft = pair
    spec = plan_local(base, draft, 1, draft_settings=TREES, threads=1,
                      timeouts=Timeouts(poll_interval_s=0.2, liveness_timeout_s=1.5, recovery_timeout_s=1.0))
    run = tmp_path / "run"
    start(spec, run)
    prompt = long_running_prompt(base, NEW_TOKENS)
    try:
        with client_for(spec, 120) as client:
            pid = service_pid(client, "stage-1")
            os.kill(pid, signal.SIGSTOP)  # stalled: silent, and no supervisor restarts a stopped process
            try:
                reply = client.generate("", prompt_ids=tuple(prompt), max_new_tokens=NEW_TOKENS)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert not reply.ok
            assert reply.error.startswith("request r1 failed: service stage-1 went silent")
            assert reply.error.endswith("and the ring did not recover within 1 s")
            good = client.generate("", prompt_ids=tuple(prompt), max_new_tokens=NEW_TOKENS)
            assert good.ok and list(good.token_ids) == greedy_reference(base, prompt, NEW_TOKENS)
    finally:
        stop(run)


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
