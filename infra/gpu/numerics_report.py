"""infra/gpu/numerics.sh's helpers: the probes' answers per thread count, and the summary table printed last.

    python3 infra/gpu/numerics_report.py probes MODEL_DIR 1 2 4
    python3 infra/gpu/numerics_report.py summary OUT_DIR
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

_ROW = re.compile(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|")


def probes(model_dir: Path, threads: list[int]) -> None:
    """Row blocks of each linear weight shape of the model and the attention tile, per thread count."""
    import torch

    from common.models.modeling import invariant
    from common.models.modeling.spec import load_model_spec

    spec = load_model_spec(model_dir)
    heads, kv, dim, hidden = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.hidden_size
    shapes = {"q/o": (heads * dim, hidden), "k/v": (kv * dim, hidden), "gate/up": (spec.intermediate_size, hidden),
              "down": (hidden, spec.intermediate_size)}
    print("| threads | weight | row blocks | any height up to 32 | widest block | attention tile |")
    print("|---|---|---|---|---|---|")
    for count in threads:
        torch.set_num_threads(count)
        tile = invariant.probe_attention_tile(heads // kv, kv, dim, "cpu", count)
        for name, shape in shapes.items():
            blocks = invariant.probe_row_blocks(*shape, torch.bfloat16, "cpu", count)
            widest = invariant.probe_widest_block(*shape, torch.bfloat16, "cpu", count) if blocks.largest == 32 else "-"
            print(f"| {count} | {name} {shape[0]}x{shape[1]} | {blocks.smallest}-{blocks.largest} | {blocks.any_size} "
                  f"| {widest} | {tile} |", flush=True)


def summary(out: Path) -> None:
    """Rows x threads (row-invariant ms, fused ms, ratio), then mode x numerics tokens/s from the bench JSONs."""
    print("| threads | rows | row-invariant ms | fused ms | row-invariant / fused |\n|---|---|---|---|---|")
    for threads in (1, 2, 4):
        path = out / f"numerics-profile-{threads}t.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        found = [m.groups() for m in map(_ROW.match, lines) if m]
        for rows, invariant, fused, ratio in found:
            print(f"| {threads} | {rows} | {invariant} | {fused} | {ratio}x |")
        if not found:
            print(f"| {threads} | - | not measured | | |")
    print("\n| mode | row-invariant tok/s | fused tok/s | invariant / fused | = local (invariant) | = local (fused) |")
    print("|---|---|---|---|---|---|")
    runs = {name: _bench(out / f"numerics-bench-{name}.json") for name in ("invariant", "fused")}
    for mode in dict.fromkeys([*runs["invariant"], *runs["fused"]]):
        (inv, inv_eq), (fus, fus_eq) = (runs[name].get(mode, (None, "-")) for name in ("invariant", "fused"))
        ratio = f"{inv / fus:.2f}x" if inv and fus else "-"
        print(f"| {mode} | {_number(inv)} | {_number(fus)} | {ratio} | {inv_eq} | {fus_eq} |")


def _bench(path: Path) -> dict[str, tuple[float, str]]:
    """Mode -> (end-to-end tokens/s, "equal/compared" against local) of one bench JSON (empty if it is missing)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    equal = payload.get("equal_to_local", {})
    return {s["mode"]: (s["tokens_per_s"], "{equal}/{compared}".format(**equal[s["mode"]]) if s["mode"] in equal
                        else "-") for s in payload.get("summary", [])}


def _number(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "probes":
        probes(Path(sys.argv[2]), [int(t) for t in sys.argv[3:]] or [2])
    elif len(sys.argv) == 3 and sys.argv[1] == "summary":
        summary(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
