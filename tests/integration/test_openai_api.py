"""`flowring serve` on a tiny process ring, driven by the official `openai` client (and raw HTTP)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from common.cluster.settings import Admission
from common.models.modeling import load_tokenizer
from common.models.modeling.tokenizer import encode_chat
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateChunk
from services.cli.main import app
from services.launcher import client_for, free_ports, plan_local, start, stop
from services.run_folder import RunFolder
from tests.support.reference import long_running_prompt
from tests.support.tiny_models import make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    base, draft = make_tiny_pair(root, family="llama", seed=4)
    spec = replace(plan_local(base, draft, 2, draft_settings=TREES, threads=1),
                   admission=Admission(max_in_flight=1, max_queued=0, retry_after_s=3.0))
    run_dir = root / "run"
    start(spec, run_dir)
    (port,) = free_ports("127.0.0.1", 1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    server = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "--port", str(port),
                               "--model-name", "tiny", "--run-dir", str(run_dir)], env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_for(url)
        yield spec, base, url, run_dir
    finally:
        server.terminate()
        server.wait(10)
        stop(run_dir)


def _connect(url: str) -> http.client.HTTPConnection:
    host, port = url.split("//")[1].split("/")[0].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def _post(url: str, path: str, body: dict) -> tuple[int, dict, dict]:
    """Status, headers and JSON body of a plain HTTP POST (what curl would get)."""
    conn = _connect(url)
    conn.request("POST", f"/v1{path}", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, payload


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = _connect(url)
            conn.request("GET", "/v1/models")
            if conn.getresponse().status == 200:
                return
        except OSError:  # not listening yet
            time.sleep(0.2)
    raise AssertionError("flowring serve did not start")


def _cancelled(run_dir: Path) -> int:
    """Requests the scheduler has logged as ended by a cancel."""
    lines = (RunFolder(run_dir).logs / "scheduler.log").read_text().splitlines()
    return sum(1 for line in lines if '"request_done"' in line and '"cancelled"' in line)


def _idle(spec) -> bool:
    deadline = time.monotonic() + 10
    with client_for(spec, 5) as client:
        while client.status().busy and time.monotonic() < deadline:
            time.sleep(0.05)
        return not client.status().busy


def _oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="none", max_retries=0)


def test_models_lists_the_served_model(served):
    _, _, url, _ = served
    assert [m.id for m in _oai(url).models.list()] == ["tiny"]


def test_completions_streamed_and_not_equal_the_ring_output(served):
    spec, _, url, _ = served
    with client_for(spec, 60) as client:
        ring = client.generate("hello ring", raw=True, max_new_tokens=12)
    plain = _oai(url).completions.create(model="tiny", prompt="hello ring", max_tokens=12, temperature=0)
    assert plain.choices[0].text == ring.text
    assert plain.usage.prompt_tokens == ring.stats["prompt_tokens"]
    assert plain.usage.completion_tokens == len(ring.token_ids)
    assert plain.choices[0].finish_reason == ("length" if len(ring.token_ids) == 12 else "stop")
    chunks = list(_oai(url).completions.create(model="tiny", prompt="hello ring", max_tokens=12, temperature=0,
                                               stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ring.text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_multi_turn_chat_uses_the_chat_template(served):
    spec, base, url, _ = served
    ids = encode_chat(load_tokenizer(base), CHAT)
    with client_for(spec, 60) as client:
        ring = client.generate("", prompt_ids=tuple(ids), max_new_tokens=10)
    plain = _oai(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, temperature=0)
    assert plain.choices[0].message.content == ring.text
    assert plain.usage.prompt_tokens == len(ids)
    stream = _oai(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, temperature=0,
                                               stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ring.text
    assert chunks[-1].usage.completion_tokens == len(ring.token_ids)


def test_a_stop_string_trims_the_text_and_frees_the_ring(served):
    spec, _, url, run_dir = served
    full = _oai(url).completions.create(model="tiny", prompt="abc", max_tokens=40, temperature=0).choices[0].text
    stop = full[5:7]
    assert len(stop) == 2
    before = _cancelled(run_dir)
    cut = _oai(url).completions.create(model="tiny", prompt="abc", max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert _idle(spec) and _cancelled(run_dir) == before + 1, "the ring request was cancelled at the stop"


def test_errors_come_in_openai_shape(served):
    _, _, url, _ = served
    with pytest.raises(openai.BadRequestError) as top_p:
        _oai(url).chat.completions.create(model="tiny", messages=CHAT, top_p=0.5)
    assert "top_p" in top_p.value.body["message"] and top_p.value.body["param"] == "top_p"
    status, _, body = _post(url, "/completions", {"prompt": "", "max_tokens": 4})
    assert status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "empty prompt" in body["error"]["message"]
    status, _, body = _post(url, "/chat/completions", {"messages": [], "max_tokens": 4})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"prompt": "", "max_tokens": 4}, "prompt", "empty prompt"),
    ({"prompt": "x" * 600, "max_tokens": 4}, None, "tokens does not fit the model's context of 512 tokens"),
    ({"prompt": "x", "max_tokens": 100000}, None, "exceeds the model's context of 512 tokens"),
    ({"prompt": "x", "max_tokens": 4, "temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"prompt": "x", "max_tokens": 4, "temperature": 7}, "temperature", "less than or equal to 2"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
])
def test_bad_input_is_a_400_in_one_line_before_any_work(served, body, param, words):
    _, _, url, run_dir = served
    starts = (RunFolder(run_dir).logs / "stage-1.log").read_text().count('"event": "start"')
    status, _, answer = _post(url, "/completions", body)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    assert words in answer["error"]["message"] and "\n" not in answer["error"]["message"]
    assert answer["error"]["param"] == param
    assert (RunFolder(run_dir).logs / "stage-1.log").read_text().count('"event": "start"') == starts


def test_busy_is_a_429_with_retry_after(served):
    spec, base, url, _ = served
    with client_for(spec, 60) as client:
        stream = client.stream("", prompt_ids=tuple(long_running_prompt(base)), max_new_tokens=400, mode="ar")
        assert isinstance(next(stream), GenerateChunk)  # the one slot is taken
        status, headers, body = _post(url, "/completions", {"prompt": "x", "max_tokens": 4})
        stream.close()
    assert status == 429 and headers["retry-after"] == "3"
    assert body["error"]["message"].startswith("busy: 1 requests in flight and 0 queued")
    assert _idle(spec)


def test_an_http_disconnect_cancels_the_ring_request(served):
    spec, base, url, run_dir = served
    before = _cancelled(run_dir)
    conn = _connect(url)
    body = {"prompt": long_running_prompt(base), "max_tokens": 400, "stream": True, "temperature": 0}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    conn.close()  # the HTTP client leaves mid-stream
    assert _idle(spec), "the ring went on decoding for a client that left"
    assert _cancelled(run_dir) == before + 1


def test_serve_refuses_without_a_cluster(tmp_path):
    result = CliRunner().invoke(app, ["serve", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no cluster" in result.output


def test_an_http_disconnect_cancels_a_request_that_is_not_streamed(served):
    spec, base, url, run_dir = served
    before = _cancelled(run_dir)
    conn = _connect(url)
    body = {"prompt": long_running_prompt(base), "max_tokens": 400, "temperature": 0}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    with client_for(spec, 5) as client:
        deadline = time.monotonic() + 10
        while not client.status().busy and time.monotonic() < deadline:  # the ring has it
            time.sleep(0.02)
    conn.close()  # the HTTP client leaves before the answer
    assert _idle(spec), "the ring went on decoding for a client that left"
    assert _cancelled(run_dir) == before + 1


def test_an_api_key_is_required_beyond_loopback_and_checked(served, tmp_path):
    spec, _base, _url, run_dir = served
    refused = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--run-dir", str(run_dir)],
                                 env={"FLOWRING_API_KEY": ""})
    assert refused.exit_code == 1 and "give --api-key" in refused.output
    (port,) = free_ports("127.0.0.1", 1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "FLOWRING_API_KEY": "s3cret"}
    server = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "--port", str(port),
                               "--model-name", "tiny", "--run-dir", str(run_dir)], env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # up once it answers, even if only to refuse
            try:
                conn = _connect(url)
                conn.request("GET", "/v1/models")
                status = conn.getresponse().status
                break
            except OSError:
                time.sleep(0.2)
        assert status == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        models = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0).models.list()
        assert [m.id for m in models.data] == ["tiny"]
    finally:
        server.terminate()
        server.wait(10)


def test_authorization_header_check():
    from services.api.app import authorized

    assert authorized("Bearer k1", "k1") and authorized("bearer  k1", "k1")
    assert not authorized("Bearer k2", "k1") and not authorized("k1", "k1") and not authorized("", "k1")


def test_unseeded_samples_differ_and_seeded_ones_repeat(served):
    _, _, url, _ = served

    def sample(**seed) -> str:
        answer = _oai(url).completions.create(model="tiny", prompt="abc", max_tokens=16, temperature=1.0, **seed)
        return answer.choices[0].text

    assert sample() != sample(), "two unseeded samples at temperature 1 were the same"
    assert sample(seed=7) == sample(seed=7)
