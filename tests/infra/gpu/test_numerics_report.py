"""infra/gpu/numerics_report.py's summary: the profile tables per thread count and the bench JSONs in one table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[3] / "infra" / "gpu" / "numerics_report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("numerics_report", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(path: Path, tokens: dict[str, float], equal: dict[str, tuple[int, int]]) -> None:
    summary = [{"mode": mode, "tokens_per_s": value} for mode, value in tokens.items()]
    path.write_text(json.dumps({"summary": summary, "equal_to_local": {
        mode: {"equal": e, "compared": n} for mode, (e, n) in equal.items()}}))


def test_summary_lists_rows_per_thread_count_and_modes_per_numerics(report, tmp_path, capsys) -> None:
    (tmp_path / "numerics-profile-2t.txt").write_text(
        "header\n| rows | row-invariant ms | fused ms | row-invariant / fused | weight GB/s | of bandwidth |\n"
        "|---|---|---|---|---|---|\n| 1 | 41.7 | 41.4 | 1.01x | 3.1 | 40% |\n| 256 | 300.0 | 150.0 | 2.00x | 1.0 | 9% |\n")
    _bench(tmp_path / "numerics-bench-invariant.json", {"ar": 5.0, "flowspec": 9.0}, {"flowspec": (3, 3)})
    _bench(tmp_path / "numerics-bench-fused.json", {"ar": 5.0, "flowspec": 12.0}, {"flowspec": (2, 3)})
    report.summary(tmp_path)
    out = capsys.readouterr().out
    assert "| 2 | 1 | 41.7 | 41.4 | 1.01x |" in out and "| 2 | 256 | 300.0 | 150.0 | 2.00x |" in out
    assert "| 1 | - | not measured | | |" in out and "| 4 | - | not measured | | |" in out
    assert "| flowspec | 9.0 | 12.0 | 0.75x | 3/3 | 2/3 |" in out
    assert "| ar | 5.0 | 5.0 | 1.00x | - | - |" in out


def test_summary_without_bench_files_still_prints_the_profiles(report, tmp_path, capsys) -> None:
    (tmp_path / "numerics-profile-1t.txt").write_text("| 16 | 10.0 | 8.0 | 1.25x | 2.0 | 20% |\n")
    report.summary(tmp_path)
    out = capsys.readouterr().out
    assert "| 1 | 16 | 10.0 | 8.0 | 1.25x |" in out
    assert out.rstrip().endswith("|---|---|---|---|---|---|")  # the bench table's header, no rows
