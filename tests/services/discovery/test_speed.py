"""The agent's speed probe: a real forward of the reference layer, measured once and then read from the cache."""

from __future__ import annotations

import json

import torch

from services.discovery import speed
from services.discovery.speed import measured_speed


def test_the_probe_is_measured_once_then_cached(tmp_path):
    first = measured_speed(tmp_path, "float32", repeats=1)
    assert not first.cached and first.forwards_per_s > 0 and first.seconds > 0
    assert f"float32 16 rows {torch.get_num_threads()} thread(s)" in first.probe
    saved = json.loads((tmp_path / "agent" / "speed.json").read_text())
    assert saved["forwards_per_s"] == first.forwards_per_s and first.probe in saved["key"]
    again = measured_speed(tmp_path, "float32", repeats=1)
    assert again.cached and again.forwards_per_s == first.forwards_per_s and again.seconds == 0.0


def test_another_dtype_a_remeasure_or_a_bad_cache_measures_again(tmp_path, monkeypatch):
    measured: list[str] = []  # the real probe is timed above; here only what triggers one matters

    def probe(dtype: str, *, repeats: int) -> float:
        measured.append(dtype)
        return 10.0 + len(measured)

    monkeypatch.setattr(speed, "reference_layer_speed", probe)
    assert measured_speed(tmp_path, "float32").forwards_per_s == 11.0
    assert measured_speed(tmp_path, "float32").cached
    other = measured_speed(tmp_path, "bfloat16")
    assert not other.cached and "bfloat16" in other.probe and other.forwards_per_s == 12.0
    assert not measured_speed(tmp_path, "bfloat16", remeasure=True).cached
    (tmp_path / "agent" / "speed.json").write_text("{not json")
    assert not measured_speed(tmp_path, "bfloat16").cached
    (tmp_path / "agent" / "speed.json").write_text(json.dumps({"key": "another torch", "forwards_per_s": 99.0}))
    assert measured_speed(tmp_path, "bfloat16").forwards_per_s == 15.0
    assert measured == ["float32", "bfloat16", "bfloat16", "bfloat16", "bfloat16"]
