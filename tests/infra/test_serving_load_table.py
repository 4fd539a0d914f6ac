"""infra/serving_load_table.py: the device script's last table, from bench --concurrency reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "serving_load_table.py"
spec = importlib.util.spec_from_file_location("serving_load_table", SCRIPT)
assert spec is not None and spec.loader is not None
table_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table_module)


def _entry(mode: str, k: int, solo: float, together: float, equal: int) -> dict:
    load = {"drafter": {"busy_ratio": 0.5, "rows_per_forward": 6.0}, "stage-1": {"busy_ratio": 0.9,
                                                                                    "rows_per_forward": 20.0}}
    return {"mode": mode, "concurrency": k, "requests": [{}] * k, "speedup": together / solo,
            "p95_latency_ratio": 1.5, "equal_to_solo": {"equal": equal, "compared": k},
            "solo": {"tokens_per_s": solo, "services": load}, "concurrent": {"tokens_per_s": together,
                                                                            "services": load}}


def test_rows_take_solo_from_the_widest_run_and_compare_flowspec_with_ar_at_each_load():
    four = {"concurrency": [_entry("ar", 4, 5.0, 18.0, 4), _entry("flowspec", 4, 12.0, 27.0, 3)]}
    eight = {"concurrency": [_entry("ar", 8, 4.0, 30.0, 8), _entry("flowspec", 8, 10.0, 45.0, 8)]}
    rows = table_module.rows([four, eight])
    assert [(r["mode"], r["in_flight"]) for r in rows] == [("ar", 1), ("ar", 4), ("ar", 8), ("flowspec", 1),
                                                          ("flowspec", 4), ("flowspec", 8)]
    by = {(r["mode"], r["in_flight"]): r for r in rows}
    assert by[("ar", 1)]["tok_s"] == 4.0, "1 in flight: the solo phase of the run with the most prompts"
    assert by[("flowspec", 4)]["fs_ar"] == 27.0 / 18.0 and by[("flowspec", 8)]["fs_ar"] == 1.5
    assert by[("flowspec", 4)]["equal"] == "3/4" and by[("ar", 4)]["fs_ar"] is None
    text = table_module.table([four, eight])
    assert "| flowspec | 8 | 45.00 | 4.50 | 8/8 | 1.50 | 1.50 | d:6.0 s1:20.0 | d:0.50 s1:0.90 |" in text
