"""The agent's speed probe: a real forward of the reference layer, measured once and then read from the cache."""

from __future__ import annotations

import json

import torch

from services.discovery import speed
from services.discovery.speed import measured_speed


def test_the_probe_is_measured_once_then_cached(tmp_path):
    first = measured_speed(tmp_path, "float32", repeats=1)
    assert not first.cached and first.value > 0 and first.seconds > 0
    assert f"float32 16 rows {torch.get_num_threads()} thread(s)" in first.probe
    saved = json.loads((tmp_path / "agent" / "speed.json").read_text())
    assert saved["forwards_per_s"] == first.value and first.probe in saved["key"]
    again = measured_speed(tmp_path, "float32", repeats=1)
    assert again.cached and again.value == first.value and again.seconds == 0.0


def test_another_dtype_a_remeasure_or_a_bad_cache_measures_again(tmp_path, monkeypatch):
    measured: list[str] = []  # the real probe is timed above; here only what triggers one matters

    def probe(dtype: str, *, repeats: int) -> float:
        measured.append(dtype)
        return 10.0 + len(measured)

    monkeypatch.setattr(speed, "reference_layer_speed", probe)
    assert measured_speed(tmp_path, "float32").value == 11.0
    assert measured_speed(tmp_path, "float32").cached
    other = measured_speed(tmp_path, "bfloat16")
    assert not other.cached and "bfloat16" in other.probe and other.value == 12.0
    assert not measured_speed(tmp_path, "bfloat16", remeasure=True).cached
    (tmp_path / "agent" / "speed.json").write_text("{not json")
    assert not measured_speed(tmp_path, "bfloat16").cached
    (tmp_path / "agent" / "speed.json").write_text(json.dumps({"key": "another torch", "forwards_per_s": 99.0}))
    assert measured_speed(tmp_path, "bfloat16").value == 15.0
    assert measured == ["float32", "bfloat16", "bfloat16", "bfloat16", "bfloat16"]


def test_the_row_cost_is_a_real_ratio_measured_once_beside_the_speed(tmp_path):
    cost = speed.measured_row_cost(tmp_path, "float32", repeats=1)
    assert not cost.cached and cost.value > 0 and "16 rows / 1 row" in cost.probe
    assert json.loads((tmp_path / "agent" / "row-cost.json").read_text())["row_cost"] == cost.value
    assert speed.measured_row_cost(tmp_path, "float32").cached
    assert not (tmp_path / "agent" / "speed.json").exists()  # each probe has its own cache


def test_sixteen_rows_cost_at_least_one_row_and_at_most_sixteen_plus_slack():
    """The ratio's two timings are of the same layer over the same context: 16 rows never beat one row by much,
    and never cost more than 16 separate rows do, give or take the machine's noise."""
    cost = speed.reference_row_cost("float32", repeats=3)
    assert 0.8 < cost < 16 * 1.5
