"""Serving on the real process ring: concurrent requests, cancel, streaming (tiny random models, TCP)."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from common.cluster.settings import Admission
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateChunk, GenerateReply
from services.cli.main import app
from services.launcher import client_for, plan_local, start, stop
from services.run_folder import RunFolder
from tests.support.reference import greedy_reference, long_running_prompt
from tests.support.tiny_models import make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
MODES = ("flowspec", "ar", "chunk", "pipedec")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base, draft = make_tiny_pair(root, family="qwen2", seed=11)
    spec = plan_local(base, draft, 2, draft_settings=TREES, threads=1)
    spec = replace(spec, admission=Admission(max_in_flight=4, max_queued=4, retry_after_s=1.0))
    start(spec, root / "run")
    try:
        yield spec, base, root / "run"
    finally:
        stop(root / "run")


def _cancelled(run_dir) -> int:
    """Requests the scheduler has logged as ended by a cancel."""
    lines = (RunFolder(run_dir).logs / "scheduler.log").read_text().splitlines()
    return sum(1 for line in lines if '"request_done"' in line and '"cancelled"' in line)


def _wait_idle(spec, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    with client_for(spec, 5) as client:
        while client.status().busy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    return True


def test_concurrent_requests_each_equal_their_solo_run(cluster):
    spec, base, _ = cluster
    rng = random.Random(5)
    jobs = [([rng.randrange(3, 300) for _ in range(rng.randrange(1, 60))], rng.randrange(4, 20), MODES[i % 4])
            for i in range(6)]

    def run(job):
        prompt, new, mode = job
        with client_for(spec, 120) as client:
            return client.generate("", prompt_ids=tuple(prompt), max_new_tokens=new, mode=mode)

    with ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(run, jobs))
    for (prompt, new, _), reply in zip(jobs, replies, strict=True):
        assert reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, prompt, new), prompt
    assert _wait_idle(spec)


def test_closing_a_stream_cancels_it_and_the_next_request_runs_at_once(cluster):
    spec, base, run_dir = cluster
    before = _cancelled(run_dir)
    with client_for(spec, 120) as client:
        stream = client.stream("", prompt_ids=tuple(long_running_prompt(base)), max_new_tokens=400, mode="ar")
        first = next(stream)
        assert isinstance(first, GenerateChunk) and first.token_ids
        stream.close()  # the caller stops reading: the request is cancelled on every service
        assert _wait_idle(spec), "the cancelled request left the scheduler busy"
        assert _cancelled(run_dir) == before + 1
        reply = client.generate("", prompt_ids=(9, 10), max_new_tokens=6)
    assert reply.ok and list(reply.token_ids) == greedy_reference(base, [9, 10], 6)


def test_a_killed_client_is_noticed_and_its_request_cancelled(cluster):
    spec, base, run_dir = cluster
    before = _cancelled(run_dir)
    client = client_for(spec, 120)
    stream = client.stream("", prompt_ids=tuple(long_running_prompt(base)), max_new_tokens=400, mode="ar")
    assert isinstance(next(stream), GenerateChunk)
    client._sock.close(0)  # what a killed process does: the connection drops without a CancelRequest
    assert _wait_idle(spec), "the scheduler did not notice the client was gone"
    assert _cancelled(run_dir) == before + 1


def test_stream_chunks_add_up_to_the_final_reply(cluster):
    spec, _, _ = cluster
    with client_for(spec, 120) as client:
        msgs = list(client.stream("hello ring", raw=True, max_new_tokens=16))
    *chunks, final = msgs
    assert isinstance(final, GenerateReply) and final.ok
    assert all(isinstance(c, GenerateChunk) for c in chunks) and len(chunks) >= 2
    assert sum((c.token_ids for c in chunks), ()) == final.token_ids
    assert final.text.startswith("".join(c.text for c in chunks))


def test_invalid_requests_get_a_clear_error_before_any_work(cluster):
    spec, _, run_dir = cluster
    starts = _stage_starts(run_dir)
    with client_for(spec, 30) as client:
        empty = client.generate("", raw=True)
        hot = client.generate("x", raw=True, temperature=float("nan"))
        cold = client.generate("x", raw=True, temperature=-0.1)
        long = client.generate("", prompt_ids=(5,) * 10, max_new_tokens=10**7)
        huge = client.generate("", prompt_ids=(5,) * 600, max_new_tokens=4)  # the tiny model's context: 512
    replies = (empty, hot, cold, long, huge)
    assert {r.code for r in replies} == {"invalid"} and all("\n" not in r.error for r in replies)
    assert "empty prompt" in empty.error and "temperature" in hot.error and "temperature" in cold.error
    assert "exceeds the model's context of 512 tokens" in long.error
    assert "prompt of 600 tokens does not fit the model's context of 512 tokens" in huge.error
    assert _stage_starts(run_dir) == starts  # refused before any service saw them


@pytest.mark.parametrize(("args", "words"), [
    (["", "--raw"], "empty prompt"),
    (["x" * 600, "--raw"], "tokens does not fit the model's context of 512 tokens"),
    (["x", "--raw", "--max-new-tokens", "100000"], "exceeds the model's context of 512 tokens"),
    (["x", "--raw", "--temperature", "nan"], "temperature must be a finite number >= 0, not nan"),
    (["x", "--raw", "--temperature", "-1"], "temperature"),
    (["x", "--raw", "--max-new-tokens", "0"], "max_new_tokens must be at least 1, not 0"),
])
def test_cli_generate_refuses_bad_input_in_one_line(cluster, args, words):
    _, _, run_dir = cluster
    starts = _stage_starts(run_dir)
    result = CliRunner().invoke(app, ["generate", *args, "--run-dir", str(run_dir)])
    assert result.exit_code != 0
    assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert _stage_starts(run_dir) == starts


def _stage_starts(run_dir) -> int:
    return (RunFolder(run_dir).logs / "stage-1.log").read_text().count('"event": "start"')


def test_cli_generate_stream_prints_text_and_speed(cluster):
    _, _, run_dir = cluster
    result = CliRunner().invoke(app, ["generate", "hello ring", "--raw", "--max-new-tokens", "8", "--stream",
                                      "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output
    plain = CliRunner().invoke(app, ["generate", "hello ring", "--raw", "--max-new-tokens", "8", "--json",
                                     "--run-dir", str(run_dir)])
    assert json.loads(plain.output)["text"] in result.output
