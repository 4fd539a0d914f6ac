"""Issue 19's serving table from `flowring bench --concurrency` JSON files (infra/gpu/serving_load.sh prints it last).

    python infra/serving_load_table.py RUN.json [RUN.json ...]

One row per mode and load: 1 in flight (the solo phase of the file with the most prompts), then every
file's K in flight. agg tok/s; x solo: against the same file's solo phase (same prompts); = solo: outputs
equal to their solo run; p95 lat x solo; fs/ar: flowspec's aggregate over ar's at that load; rows/fwd and
busy per service (drafter d, stages s1.., verifier v) from the services' Prometheus counters of that phase.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SHORT = {"drafter": "d", "verifier": "v"}


def _short(name: str) -> str:
    return SHORT.get(name, name.replace("stage-", "s"))


def _per_service(services: dict[str, dict[str, float]], key: str, digits: int) -> str:
    return " ".join(f"{_short(name)}:{load[key]:.{digits}f}" for name, load in services.items()) or "-"


def rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows (mode, in flight, figures) from bench reports' ``concurrency`` entries."""
    if not reports:
        return []
    widest = max(reports, key=lambda r: max((len(c["requests"]) for c in r["concurrency"]), default=0))
    out = []
    for c in widest["concurrency"]:
        n = len(c["requests"])
        out.append({"mode": c["mode"], "in_flight": 1, "tok_s": c["solo"]["tokens_per_s"], "x_solo": 1.0,
                    "equal": f"{n}/{n}", "p95_ratio": 1.0, "services": c["solo"].get("services", {})})
    for report in reports:
        for c in report["concurrency"]:
            eq = c["equal_to_solo"]
            out.append({"mode": c["mode"], "in_flight": c["concurrency"], "tok_s": c["concurrent"]["tokens_per_s"],
                        "x_solo": c["speedup"], "equal": f"{eq['equal']}/{eq['compared']}",
                        "p95_ratio": c["p95_latency_ratio"], "services": c["concurrent"].get("services", {})})
    ar = {r["in_flight"]: r["tok_s"] for r in out if r["mode"] == "ar"}
    for r in out:
        r["fs_ar"] = r["tok_s"] / ar[r["in_flight"]] if r["mode"] == "flowspec" and ar.get(r["in_flight"]) else None
    return sorted(out, key=lambda r: (r["mode"] != "ar", r["in_flight"]))


def table(reports: list[dict[str, Any]]) -> str:
    lines = ["| mode | in flight | agg tok/s | x solo | = solo | p95 lat x solo | fs/ar | rows/fwd | busy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows(reports):
        fs_ar = f"{r['fs_ar']:.2f}" if r["fs_ar"] is not None else "-"
        lines.append(f"| {r['mode']} | {r['in_flight']} | {r['tok_s']:.2f} | {r['x_solo']:.2f} | {r['equal']} | "
                     f"{r['p95_ratio']:.2f} | {fs_ar} | {_per_service(r['services'], 'rows_per_forward', 1)} | "
                     f"{_per_service(r['services'], 'busy_ratio', 2)} |")
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    reports = []
    for path in paths:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            print(f"skipped {path}: {exc}")
    if not reports:
        print("no bench report to tabulate")
        return 1
    first = reports[0]
    print(f"machine: {first.get('machine', {}).get('cpu', '?')}, {first.get('machine', {}).get('cores', '?')} cores; "
          f"date {first.get('date', '?')}")
    for report in reports:
        print(f"command: {report.get('command', '?')}")
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
