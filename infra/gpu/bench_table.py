"""One table from several `flowring bench --json` files: decode tok/s per mode, ratios to local, and greedy
equality to the ring's own ar (T = 0), e.g. ``python3 infra/gpu/bench_table.py invariant=a.json fused=b.json``.

A file that is missing or holds no summary gives a row saying so: the table is printed whatever ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODES = ("local", "ar", "chunk", "flowspec")


def row(label: str, path: Path) -> str:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"{label:<22} not run ({type(exc).__name__}: {path})"
    rates = {s["mode"]: s["decode_tokens_per_s"] for s in data.get("summary", [])}
    failures = sum(s["failures"] for s in data.get("summary", []))
    ar = {r["prompt_id"]: r["token_ids"] for r in data["records"] if r["mode"] == "ar" and r["ok"]}
    equal = []
    for mode in ("chunk", "flowspec", "local"):
        runs = [r for r in data["records"] if r["mode"] == mode and r["ok"] and r["prompt_id"] in ar]
        same = sum(r["token_ids"] == ar[r["prompt_id"]] for r in runs)
        equal.append(f"{same}/{len(runs)}")
    local = rates.get("local", 0.0)
    ratio = {m: f"{rates[m] / local:.2f}x" if local and m in rates else "-" for m in ("ar", "flowspec")}
    drafter = next((s["drafter_ms_per_step"] for s in data["summary"] if s["mode"] == "flowspec"), 0.0)
    cells = [f"{rates[m]:7.1f}" if m in rates else f"{'-':>7}" for m in MODES]
    return (f"{label:<22} {' '.join(cells)} {ratio['ar']:>8} {ratio['flowspec']:>8}   "
            f"{equal[0]:>7} {equal[1]:>7} {equal[2]:>7} {drafter:8.1f} {failures:5d}")


def main(argv: list[str]) -> int:
    print(f"{'run':<22} {'local':>7} {'ar':>7} {'chunk':>7} {'flowsp':>7} {'ar/loc':>8} {'fs/loc':>8}   "
          f"{'=ar:ch':>7} {'=ar:fs':>7} {'=ar:loc':>7} {'draft ms':>8} {'fail':>5}")
    for arg in argv:
        label, _, path = arg.partition("=")
        print(row(label, Path(path)))
    print("decode tok/s; =ar:ch/fs/loc: prompts whose greedy output in chunk / flowspec / local equals the ring's "
          "own ar; draft ms: the drafter's ms per verification step in flowspec")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
