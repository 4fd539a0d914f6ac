"""The HTTP API's routes against a fake scheduler: seeds, and every error in OpenAI's shape."""

from __future__ import annotations

import pytest

from services.api.app import ApiSettings
from tests.support.fake_api import FakeScheduler, post, serve_api
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
