"""StageCore: a request's KV cache reserved at its start where the device asks for it."""

from __future__ import annotations

import torch

from common.models.modeling import load_slice
from common.speculation.modes import DraftSettings
from common.wire.commands import StartRequest
from services.stage.core import StageCore
from tests.support.tiny_models import make_tiny_model


def test_a_reserving_stage_sizes_each_cache_for_the_whole_request(tmp_path) -> None:
    base = make_tiny_model(tmp_path / "base", num_layers=2, hidden=32, seed=1)
    model = load_slice(base, (0, 1), with_embedding=True, with_head=False, dtype=torch.float32)
    start = StartRequest("r1", 0, prompt=tuple(range(3, 103)), max_new_tokens=200,
                         draft=DraftSettings(node_cap=128, segment_cap=16))
    reserving, plain = StageCore("stage-1", model, reserve_kv=True), StageCore("stage-1", model)
    reserving.handle(start)
    plain.handle(start)  # on the CPU the default keeps the doubling-on-demand caches
    assert reserving.requests["r1"].cache.capacity >= 100 + 200 + 128 + 16
    assert plain.requests["r1"].cache.capacity == model.new_cache().capacity
