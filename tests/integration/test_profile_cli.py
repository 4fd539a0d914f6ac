"""``flowring profile forward`` on a tiny checkpoint: both implementations timed, one table row per size."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from common.speculation.draft_vocab import draft_vocabulary
from services.cli.main import app
from tests.support.tiny_models import make_tiny_model


def test_forward_table_has_a_row_per_segment_size(tmp_path):
    base = make_tiny_model(tmp_path / "base", family="qwen2", num_layers=4)
    result = CliRunner().invoke(app, ["profile", "forward", "--base", str(base), "--layers", "1-3", "--rows", "1,4",
                                      "--dtype", "float32", "--context", "16", "--repeats", "3"])
    assert result.exit_code == 0, result.output
    rows = re.findall(r"\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| ([\d.]+) \| ([\d.]+)x \|", result.output)
    assert [r[0] for r in rows] == ["1", "4"]
    for _, invariant_ms, fused_ms, ratio, transformers_ms, _ in rows:
        assert float(invariant_ms) > 0 and float(fused_ms) > 0 and float(transformers_ms) > 0
        # The ratio is of the unrounded times; each time is printed to 0.05 ms, the ratio to 0.005.
        inv, fused = float(invariant_ms), float(fused_ms)
        lowest, highest = (inv - 0.05) / (fused + 0.05), (inv + 0.05) / max(fused - 0.05, 1e-9)
        assert lowest - 0.005 <= float(ratio) <= highest + 0.005
    assert "layers 1-3" in result.output and "read bandwidth" in result.output


def test_forward_without_transformers_lists_the_costliest_operators(tmp_path):
    base = make_tiny_model(tmp_path / "base", family="qwen2", num_layers=2)
    result = CliRunner().invoke(app, ["profile", "forward", "--base", str(base), "--layers", "0-2", "--rows", "3",
                                      "--context", "8", "--repeats", "3", "--no-transformers", "--ops", "4"])
    assert result.exit_code == 0, result.output
    assert "transformers ms" not in result.output
    assert re.search(r"\| 3 \| [\d.]+ \| [\d.]+ \| [\d.]+x \| [\d.]+ \|", result.output)
    for label in ("row-invariant", "fused"):
        section = result.output.split(f"3 row(s), {label}: self CPU ms per forward")[1].split("\n\n")[0]
        ops = re.findall(r"\| ([\w:.]+) \| ([\d.]+) \| (\d+) \|", section)
        assert len(ops) == 4, section
        assert [float(ms) for _, ms, _ in ops] == sorted((float(ms) for _, ms, _ in ops), reverse=True)


def test_bad_layer_range_is_one_line(tmp_path):
    base = make_tiny_model(tmp_path / "base", family="qwen2", num_layers=4)
    result = CliRunner().invoke(app, ["profile", "forward", "--base", str(base), "--layers", "2-9"])
    assert result.exit_code == 1 and "not a range of the model's layers" in result.output


def test_draft_table_compares_reforwarding_kept_rows_and_a_reduced_vocabulary(tmp_path):
    draft = make_tiny_model(tmp_path / "draft", family="qwen2", num_layers=2)
    draft_vocabulary(draft, 64, corpus_chars=20_000)  # saved beside the model: the command reads it
    result = CliRunner().invoke(app, ["profile", "draft", "--draft", str(draft), "--draft-vocab", "64", "--prompt",
                                      "def add(a, b):", "--steps", "4", "--dtype", "float32",
                                      "--tree", "fill_nodes=8", "--tree", "fill_depth=3",
                                      "--tree", "expand_nodes=4"])
    assert result.exit_code == 0, result.output
    rows = re.findall(r"\| ([^|]+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+|-) \| ([\d.]+) \|",
                      result.output)
    assert [(r[0], r[1]) for r in rows] == [("re-forward, full vocabulary", "320"), ("kept KV, full vocabulary", "320"),
                                            ("kept KV, 64 tokens", "64")]
    assert all(float(r[2]) > 0 for r in rows)
    assert rows[0][6] == rows[1][6]  # kept rows replay the very decode that re-forwarding does
    assert float(rows[1][4]) < float(rows[0][4])  # ... forwarding fewer rows per growth
    bad = CliRunner().invoke(app, ["profile", "draft", "--draft", str(draft), "--tree", "depth=3"])
    assert bad.exit_code == 1 and "unknown tree setting 'depth'" in bad.output
