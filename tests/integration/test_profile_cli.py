"""``flowring profile forward`` on a tiny checkpoint: both implementations timed, one table row per size."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from services.cli.main import app
from tests.support.tiny_models import make_tiny_model


def test_forward_table_has_a_row_per_segment_size(tmp_path):
    base = make_tiny_model(tmp_path / "base", family="qwen2", num_layers=4)
    result = CliRunner().invoke(app, ["profile", "forward", "--base", str(base), "--layers", "1-3", "--rows", "1,4",
                                      "--dtype", "float32", "--context", "16", "--repeats", "3"])
    assert result.exit_code == 0, result.output
    rows = re.findall(r"\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|", result.output)
    assert [r[0] for r in rows] == ["1", "4"]
    assert all(float(ours) > 0 and float(theirs) > 0 for _, ours, theirs, _ in rows)
    assert "layers 1-3" in result.output and "read bandwidth" in result.output


def test_bad_layer_range_is_one_line(tmp_path):
    base = make_tiny_model(tmp_path / "base", family="qwen2", num_layers=4)
    result = CliRunner().invoke(app, ["profile", "forward", "--base", str(base), "--layers", "2-9"])
    assert result.exit_code == 1 and "not a range of the model's layers" in result.output
