"""The scheduler SIGKILLed on the real process ring: its supervisor restarts it, the new process resumes every
unfinished request from the journal, and each client's stream continues to the output of an undisturbed
run, with no token repeated or lost. The OpenAI API is supervised too."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from common.cluster.settings import Timeouts
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateChunk, GenerateReply
from services.launcher import client_for, plan_local, start, start_api, stop
from services.run_folder import RunFolder
from tests.support.reference import greedy_reference, long_running_prompt
from tests.support.tiny_models import make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
NEW_TOKENS = 40
SLOW_LINK_MS = 3.0  # every hop's emulated latency: slow enough to kill the scheduler mid-request
STREAMS = 3


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), family="llama", seed=5)


def scheduler_pid(client) -> int:
    return next(s.pid for s in client.status().services if s.name == "scheduler")


def child_of(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def wait_for(predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # noqa: BLE001 (not up yet)
            pass
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s")


def test_a_killed_scheduler_and_api_come_back(pair, tmp_path):
    """An OpenAI stream goes on across a scheduler restart (the API's ring client resumes); a killed API
    process is restarted by its supervisor."""
    import openai

    base, draft = pair
    spec = plan_local(base, draft, 1, draft_settings=TREES, threads=1, timeouts=Timeouts(poll_interval_s=0.2))
    run = tmp_path / "run"
    start(spec, run)
    try:
        url = start_api(spec, run, port=_free_port())
        with client_for(spec, 60) as client:
            old = scheduler_pid(client)
        api = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        text = ""
        model = api.models.list().data[0].id
        for i, chunk in enumerate(api.completions.create(model=model, prompt="hello ring", max_tokens=NEW_TOKENS,
                                                          temperature=0, stream=True)):
            text += chunk.choices[0].text if chunk.choices else ""
            if i == 0:
                os.kill(old, signal.SIGKILL)
        with client_for(spec, 60) as client:
            new = wait_for(lambda: (pid := scheduler_pid(client)) != old and client.status().ready and pid)
            assert new != old
            undisturbed = client.generate("hello ring", raw=True, max_new_tokens=NEW_TOKENS)
        assert undisturbed.ok and text == undisturbed.text
        pids = json.loads(RunFolder(run).pids.read_text())
        child = child_of(pids["api"])
        os.kill(child, signal.SIGKILL)
        import urllib.request
        wait_for(lambda: child_of(pids["api"]) != child
                 and urllib.request.urlopen(f"{url}/models", timeout=2).status == 200)
    finally:
        assert len(stop(run)) == 5
    logs = RunFolder(run).logs
    assert [e["event"] for e in _events(logs / "scheduler-supervisor.log")].count("service_restarted") == 1
    assert [e["event"] for e in _events(logs / "api-supervisor.log")].count("service_restarted") == 1
    assert [e["event"] for e in _events(logs / "scheduler.log")].count("client_resumed") == 1


def test_scheduler_killed_mid_request_with_streams_running(pair, tmp_path):
    base, draft = pair
    spec = plan_local(base, draft, 2, draft_settings=TREES, threads=1, timeouts=Timeouts(poll_interval_s=0.2))
    run = tmp_path / "run"
    start(spec, run)
    prompts = [long_running_prompt(base, NEW_TOKENS)[: 6 + i] for i in range(STREAMS)]
    expected = [greedy_reference(base, p, NEW_TOKENS) for p in prompts]
    results: list[tuple[list[int], str, GenerateReply | None, list[float]]] = [([], "", None, []) for _ in prompts]
    some_tokens = threading.Event()

    def stream(i: int) -> None:
        tokens, text, reply, arrivals = [], "", None, []
        with client_for(spec, 120) as client:
            for msg in client.stream("", prompt_ids=tuple(prompts[i]), max_new_tokens=NEW_TOKENS,
                                     link_latency_ms=SLOW_LINK_MS):
                arrivals.append(time.monotonic())
                if isinstance(msg, GenerateChunk):
                    tokens.extend(msg.token_ids)
                    text += msg.text
                    if len(tokens) >= 4:
                        some_tokens.set()
                else:
                    reply = msg
        results[i] = (tokens, text, reply, arrivals)

    try:
        with client_for(spec, 60) as client:
            old = scheduler_pid(client)
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
        for t in threads:
            t.start()
        assert some_tokens.wait(120)
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        for t in threads:
            t.join(300)
        with client_for(spec, 60) as client:
            assert scheduler_pid(client) != old
    finally:
        stop(run)
    recovery = []
    for (tokens, text, reply, arrivals), want in zip(results, expected, strict=True):
        assert reply is not None and reply.ok, reply
        assert list(reply.token_ids) == want
        assert tokens == want  # nothing sent twice, nothing lost
        assert text == reply.text
        after = [t for t in arrivals if t > killed]
        recovery.append(after[0] - killed if after else 0.0)
    print(f"recovery (kill -> next message per stream) s: {[round(r, 2) for r in recovery]}")
    restored = [e for e in _events(run / "logs" / "scheduler.log") if e["event"] == "request_restored"]
    assert 1 <= len(restored) <= STREAMS
    resumed = [e for e in _events(run / "logs" / "scheduler.log") if e["event"] == "client_resumed"]
    assert len(resumed) == len(restored)


def _free_port() -> int:
    from services.launcher import free_ports
    return free_ports("127.0.0.1", 1)[0]


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
