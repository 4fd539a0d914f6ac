"""Liveness on the real process ring: a stalled service fails the running request by name once the
recovery bound passes, shows as unhealthy in status, and a resumed one serves the next request
correctly; a killed one is restarted by its supervisor and the next request is served."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from common.cluster.settings import Timeouts
from common.speculation.modes import DraftSettings
from services.launcher import client_for, plan_local, start, stop
from tests.support.reference import greedy_reference
from tests.support.tiny_models import make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), family="llama", seed=5)


def _health(client, name: str) -> bool:
    return next(s.healthy for s in client.status().services if s.name == name)


def _pid(client, name: str) -> int:
    return next(s.pid for s in client.status().services if s.name == name)


def _wait_health(client, name: str, healthy: bool, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _health(client, name) != healthy:
        assert time.monotonic() < deadline, f"{name} never became {'healthy' if healthy else 'unhealthy'}"
        time.sleep(0.2)


def test_silent_services_fail_the_request_by_name(pair, tmp_path):
    base, draft = pair
    spec = plan_local(base, draft, 2, draft_settings=TREES, threads=1,
                      timeouts=Timeouts(poll_interval_s=0.2, recovery_timeout_s=15.0))
    run = tmp_path / "run"
    start(spec, run)
    prompt = (5, 9, 17, 33)
    try:
        with client_for(spec, 120) as client:
            pids = {s.name: s.pid for s in client.status().services}
            os.kill(pids["stage-2"], signal.SIGSTOP)  # stalled: alive but silent
            try:
                reply = client.generate("", prompt_ids=prompt, max_new_tokens=8)
                assert not reply.ok
                assert "request r1" in reply.error and "service stage-2 went silent" in reply.error
                assert not _health(client, "stage-2") and not client.status().ready
            finally:
                os.kill(pids["stage-2"], signal.SIGCONT)
            _wait_health(client, "stage-2", True)
            good = client.generate("", prompt_ids=prompt, max_new_tokens=8)
            assert good.ok, good.error
            assert list(good.token_ids) == greedy_reference(base, list(prompt), 8)

            os.kill(pids["verifier"], signal.SIGKILL)  # its supervisor restarts it
            reply = client.generate("", prompt_ids=prompt, max_new_tokens=8)
            assert reply.ok and reply.token_ids == good.token_ids
            assert client.status().ready and _pid(client, "verifier") != pids["verifier"]
    finally:
        stopped = stop(run)
    assert "verifier" in stopped
    done = [e for e in _events(run / "logs" / "scheduler.log") if e["event"] == "request_done"]
    assert [(e["request_id"], e["ok"]) for e in done] == [("r1", False), ("r2", True), ("r3", True)]
    assert done[1]["new_tokens"] == len(good.token_ids) and done[1]["service"] == "scheduler" and done[1]["host"]
    starts = [e for e in _events(run / "logs" / "stage-1.log") if e["event"] == "start"]
    # Bound by the loop, not passed by hand; r3 met a dead verifier and was replayed as r3~1.
    assert [e["request_id"] for e in starts] == ["r1", "r2", "r3", "r3~1"]


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
