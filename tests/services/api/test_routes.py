"""The HTTP API's routes against a fake scheduler: seeds, and every error in OpenAI's shape."""

from __future__ import annotations

import json

import pytest
import structlog

from common.models.modeling import load_tokenizer
from common.models.modeling.tokenizer import encode_prompt
from common.wire.client import GenerateReply, StatusReply
from services.api.app import ApiSettings
from tests.support.fake_api import FakeScheduler, post, serve_api, without_chat_template
from tests.support.tiny_models import make_tiny_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("api") / "m", num_layers=1, hidden=16, heads=2, kv_heads=1)


@pytest.fixture
def scheduler():
    fake = FakeScheduler()
    yield fake
    fake.close()


@pytest.fixture
def api(scheduler, model_dir):
    settings = ApiSettings(scheduler_endpoint=scheduler.endpoint, model_dir=str(model_dir), model_name="tiny",
                           timeout_s=10)
    with serve_api(settings) as base:
        yield base


def test_unseeded_requests_sample_afresh_and_seeded_ones_repeat(api, scheduler):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2, "temperature": 1.0}
    for _ in range(3):
        assert post(api, "/v1/completions", body)[0] == 200
    for _ in range(2):
        assert post(api, "/v1/completions", {**body, "seed": 1234})[0] == 200
    seeds = [r.seed for r in scheduler.requests]
    assert len(set(seeds[:3])) == 3, f"unseeded requests share a seed: {seeds[:3]}"
    assert seeds[3:] == [1234, 1234]


def _error(raw: bytes) -> dict:
    body = json.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and "\n" not in body["error"]["message"]
    return body["error"]


def test_an_unknown_model_is_a_404_model_not_found(api, scheduler):
    status, kind, raw = post(api, "/v1/chat/completions", {**CHAT, "model": "gpt-4o"})
    assert status == 404 and kind == "application/json"
    error = _error(raw)
    assert error["code"] == "model_not_found" and error["param"] == "model" and "'tiny'" in error["message"]
    assert not scheduler.requests, "an unknown model reached the scheduler"


@pytest.mark.parametrize(("reply", "status", "type_"), [
    (GenerateReply(ok=False, error="prompt too long", code="invalid"), 400, "invalid_request_error"),
    (GenerateReply(ok=False, error="busy: 4 in flight", code="busy", retry_after_s=2.0), 429, "rate_limit_error"),
    (GenerateReply(ok=False, error="stage-1: kaboom", code="failed"), 500, "server_error"),
])
def test_ring_refusals_keep_their_status_and_shape(api, scheduler, reply, status, type_):
    scheduler.answer = lambda request: [reply]
    got, kind, raw = post(api, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2})
    assert got == status and kind == "application/json"
    error = _error(raw)
    assert error["type"] == type_ and error["message"] == reply.error


def test_invalid_bodies_and_unknown_paths_are_openai_errors(api):
    status, _, raw = post(api, "/v1/completions", "{not json")
    assert status == 400 and _error(raw)["type"] == "invalid_request_error"
    status, kind, raw = post(api, "/v1/nothing", {})
    assert status == 404 and kind == "application/json" and _error(raw)["message"] == "Not Found"


def test_an_unexpected_exception_is_a_500_with_a_message_logged_with_the_request_id(api, scheduler):
    scheduler.answer = lambda request: [StatusReply(ready=True)]  # not a generate reply: a protocol error
    with structlog.testing.capture_logs() as logs:
        status, kind, raw = post(api, "/v1/chat/completions", CHAT)
    assert status == 500 and kind == "application/json"
    error = _error(raw)
    assert error["type"] == "server_error" and "ProtocolError" in error["message"]
    failures = [e for e in logs if e["event"] == "api_route_failed"]
    assert len(failures) == 1 and failures[0]["request_id"].startswith("chatcmpl-")
    assert failures[0]["request_id"] in error["message"]


def test_a_model_without_a_chat_template_falls_back_like_generate(scheduler, tmp_path):
    plain = without_chat_template(make_tiny_model(tmp_path / "m", num_layers=1, hidden=16, heads=2, kv_heads=1))
    settings = ApiSettings(scheduler_endpoint=scheduler.endpoint, model_dir=str(plain), model_name="tiny",
                           timeout_s=10)
    tokenizer = load_tokenizer(plain)
    with serve_api(settings) as base:
        status, _, raw = post(base, "/v1/chat/completions", CHAT)
        assert status == 200, raw
        assert scheduler.requests[-1].prompt_ids == tuple(encode_prompt(tokenizer, "hi", raw=True))
        two = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        status, _, raw = post(base, "/v1/chat/completions", {**CHAT, "messages": two})
    assert status == 400
    error = _error(raw)
    assert error["code"] == "no_chat_template" and "/v1/completions" in error["message"]
    assert len(scheduler.requests) == 1
