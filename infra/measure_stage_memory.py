"""Measure the resident memory of each flowring process kind for a model, one fresh subprocess at a time.

For every split in ``--splits`` the base model's layers are divided as ``flowring up --stages N`` does
(``even_split``) and each stage loads only its slice (stage 1 with the embedding). Also measured: a
process that only imports torch + ``common.models.modeling`` (the fixed overhead), the verifier's head-only
slice ``(L, L)``, and the whole model as one slice with embedding and head. Each child reports its
peak RSS (``VmHWM``), current RSS (``VmRSS``) and anonymous RSS (``RssAnon``) from /proc/self/status
after loading, the peak anonymous RSS sampled during the load (file-backed pages of the mmapped
checkpoint are reclaimable; anonymous ones are not), its parameter bytes, the bytes ``common.cluster.partition.layer_costs`` predicts, and the load time.

    .venv/bin/python infra/measure_stage_memory.py --base qwen-coder-1.5b --dtype bfloat16 --splits 1,2,4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from common.models.dtypes import dtype_bytes

if TYPE_CHECKING:
    from common.cluster.partition import LayerCosts

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def _status_bytes() -> dict[str, int]:
    """Selected /proc/self/status memory fields, in bytes."""
    values: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in STATUS_FIELDS:
            values[key] = int(rest.split()[0]) * 1024  # reported in kB
    return values


class _Sampler(threading.Thread):
    """Polls /proc/self/status while a load runs, keeping the highest anonymous and file-backed RSS."""

    def __init__(self, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = _status_bytes()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now.get(key, 0))
            self.done.wait(self.interval_s)


def _child(job: dict) -> dict:
    """Runs in a fresh interpreter: import, optionally load one slice, report memory."""
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    import torch

    from common.models.modeling import load_slice

    imported = time.perf_counter()
    result = {"import_s": imported - start, "param_bytes": 0, "load_s": 0.0}
    sampler = _Sampler()
    sampler.start()
    if job["kind"] != "baseline":
        module = load_slice(
            Path(job["model_dir"]), (job["first"], job["last"]), with_embedding=job["embedding"],
            with_head=job["head"], dtype=getattr(torch, job["dtype"]),
        )
        result["load_s"] = time.perf_counter() - imported
        result["param_bytes"] = sum(p.numel() * p.element_size() for p in module.parameters())
    sampler.done.set()
    sampler.join()
    result.update(_status_bytes())
    # Sampled, so a short spike may be missed; VmHWM is the exact peak of anonymous + file-backed.
    result["PeakAnonSampled"] = max(sampler.peak["RssAnon"], result["RssAnon"])
    result["PeakFileSampled"] = max(sampler.peak["RssFile"], result["RssFile"])
    return result


def _jobs(model_dir: Path, dtype: str, splits: list[int]) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from common.cluster.partition import even_split
    from common.models.modeling import load_model_spec

    n = load_model_spec(model_dir).num_layers
    common = {"model_dir": str(model_dir), "dtype": dtype}
    jobs = [{"label": "baseline (import torch + common.models.modeling)", "kind": "baseline", "split": "-",
             "first": 0, "last": 0, "embedding": False, "head": False, **common}]
    for split in splits:
        for i, (first, last) in enumerate(even_split(n, split)):
            jobs.append({"label": f"stage {i + 1}/{split}", "kind": "stage", "split": str(split), "first": first,
                         "last": last, "embedding": i == 0, "head": False, **common})
    jobs.append({"label": "verifier (norm + lm_head)", "kind": "verifier", "split": "-", "first": n, "last": n,
                 "embedding": False, "head": True, **common})
    jobs.append({"label": "whole model (embed + layers + head)", "kind": "whole", "split": "-", "first": 0,
                 "last": n, "embedding": True, "head": True, **common})
    return jobs


def _predicted(costs: LayerCosts, tied: bool, job: dict) -> int:
    """Parameter bytes ``layer_costs`` predicts for the job's slice."""
    size = sum(costs.layer_bytes[job["first"] : job["last"]])
    size += costs.embedding_bytes if job["embedding"] else 0
    if job["head"]:
        # One slice holding both ends of a tied model shares the matrix; layer_costs counts it per process.
        size += costs.head_bytes - (costs.embedding_bytes if tied and job["embedding"] else 0)
    return size


def _run_child(job: dict) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{job['label']} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="qwen-coder-1.5b", help="catalog name or Hugging Face folder")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--splits", default="1,2,4", help="stage counts, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    sys.path.insert(0, str(ROOT))
    from common.cluster.partition import layer_costs
    from common.models.modeling import load_model_spec
    from common.models.store import resolve

    model_dir = resolve(args.base)
    costs = layer_costs(model_dir, dtype_bytes(args.dtype))
    tied = load_model_spec(model_dir).tie_word_embeddings
    splits = [int(s) for s in args.splits.split(",") if s.strip()]
    rows = []
    for job in _jobs(model_dir, args.dtype, splits):
        measured = _run_child(job)  # one at a time: each child's peak is its own
        predicted = 0 if job["kind"] == "baseline" else _predicted(costs, tied, job)
        rows.append({**{k: job[k] for k in ("label", "kind", "split", "first", "last", "embedding", "head")},
                     "predicted_bytes": predicted, **measured})
        print(f"measured {job['label']}", file=sys.stderr)

    base_rss = rows[0]["VmRSS"]
    print(f"\n{args.base} ({model_dir}), {args.dtype}\n")
    print("| process | layers | params MiB | predicted MiB | peak RSS (VmHWM) MiB | peak anon MiB (sampled) "
          "| RSS MiB | anon RSS MiB | RSS - baseline MiB | load s |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        layers = "-" if r["kind"] == "baseline" else f"{r['first']}-{r['last']}"
        print(f"| {r['label']} | {layers} | {_mib(r['param_bytes'])} | {_mib(r['predicted_bytes'])} "
              f"| {_mib(r['VmHWM'])} | {_mib(r['PeakAnonSampled'])} | {_mib(r['VmRSS'])} | {_mib(r['RssAnon'])} | {_mib(r['VmRSS'] - base_rss)} "
              f"| {r['load_s']:.2f} |")
    print()
    whole = next(r for r in rows if r["kind"] == "whole")
    verifier = next(r for r in rows if r["kind"] == "verifier")
    for split in splits:
        stages = [r for r in rows if r["split"] == str(split)]
        total = sum(r["VmRSS"] for r in stages) + verifier["VmRSS"]
        peak = max(r["VmHWM"] for r in stages)
        print(f"- {split} stage(s) + verifier: sum of RSS {_mib(total)} MiB vs whole model {_mib(whole['VmRSS'])} "
              f"MiB; largest stage peak {_mib(peak)} MiB")
    if args.json:
        args.json.write_text(json.dumps({"base": args.base, "model_dir": str(model_dir), "dtype": args.dtype,
                                         "splits": splits, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
