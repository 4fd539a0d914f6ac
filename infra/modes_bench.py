"""Side-by-side modes on one cluster with every service pinned to its own cores (a LAN of boards).

Usage: python infra/modes_bench.py --base DIR --draft DIR --stages 2 --cores-per-service 3 \
           --prompts FILE.jsonl --num-prompts 5 --max-new-tokens 64 --modes ar,chunk,pipedec,flowspec
Prints one line per generation and a summary per mode (decode tokens/s = total new tokens after the
first / total decode time). Modes run interleaved prompt by prompt after one warm-up per mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.protocol import DraftSettings  # noqa: E402
from services.launcher import client_for, plan_local, start, stop  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", required=True)
    p.add_argument("--draft", required=True)
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--cores-per-service", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--prompts", required=True)
    p.add_argument("--num-prompts", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--modes", default="ar,chunk,pipedec,flowspec")
    p.add_argument("--settings", default="{}", help="DraftSettings overrides as JSON")
    args = p.parse_args()
    settings = DraftSettings(**json.loads(args.settings))
    spec = plan_local(Path(args.base), Path(args.draft), args.stages, dtype=args.dtype,
                      threads=args.cores_per_service, draft_settings=settings)
    c = args.cores_per_service
    ring = [spec.drafter, *spec.stages, spec.verifier]
    pinned = {pl.name: f"{i * c}-{i * c + c - 1}" for i, pl in enumerate(ring)}
    spec = replace(spec, drafter=replace(spec.drafter, cpus=pinned["drafter"]),
                   stages=tuple(replace(s, cpus=pinned[s.name]) for s in spec.stages),
                   verifier=replace(spec.verifier, cpus=pinned["verifier"]),
                   scheduler=replace(spec.scheduler, cpus=pinned["verifier"]))
    modes = args.modes.split(",")
    with open(args.prompts) as f:
        lines = [json.loads(line) for line in f if line.strip()][: args.num_prompts]
    prompts = [d["turns"][0] if "turns" in d else d["prompt"] for d in lines]
    run_dir = Path(tempfile.mkdtemp()) / "run"
    print(f"machine: {platform.processor() or platform.machine()}, pinning {pinned}, settings {settings}")
    start(spec, run_dir)
    totals = {m: {"new": 0, "decode_ms": 0.0, "wall_ms": 0.0, "steps": 0, "rounds": 0, "step_tokens": 0.0,
                  "draft_ms": 0.0, "busy": {}} for m in modes}
    try:
        with client_for(spec, 900) as client:
            for mode in modes:
                client.generate(prompts[0], max_new_tokens=8, mode=mode)
            for i, prompt in enumerate(prompts):
                for mode in modes:
                    r = client.generate(prompt, max_new_tokens=args.max_new_tokens, mode=mode,
                                        temperature=args.temperature, seed=i)
                    if not r.ok:
                        print(f"FAILED {mode} prompt {i}: {r.error}")
                        continue
                    s, t = r.stats, totals[mode]
                    t["new"] += s["new_tokens"] - 1
                    t["decode_ms"] += s["decode_ms"]
                    t["wall_ms"] += s["wall_ms"]
                    t["steps"] += s["steps"]
                    t["rounds"] += s["rounds"]
                    t["step_tokens"] += s["tokens_per_step"] * s["steps"]
                    t["draft_ms"] += s["drafter_busy_ms"]
                    for name, v in s["services"].items():
                        t["busy"][name] = t["busy"].get(name, 0.0) + v["busy_ms"]
                    print(f"{mode:9s} prompt {i}: {s['decode_tokens_per_s']:.2f} tok/s, "
                          f"{s['tokens_per_step']:.2f} tok/step, rounds {s['rounds']}, steps {s['steps']}")
    finally:
        stop(run_dir)
    print("\n| mode | decode tok/s | tokens/step | tokens/round | rounds | busy ratio (stages, verifier, drafter) |"
          " vs chunk | vs ar |")
    print("|---|---|---|---|---|---|---|---|")
    rate = {m: t["new"] / (t["decode_ms"] / 1e3) if t["decode_ms"] else 0.0 for m, t in totals.items()}
    for m, t in totals.items():
        busy = ", ".join(f"{v / t['wall_ms']:.2f}" for _, v in sorted(t["busy"].items()))
        busy += f", {t['draft_ms'] / t['wall_ms']:.2f}" if t["wall_ms"] else ""
        vs = [f"{rate[m] / rate[b]:.2f}x" if rate.get(b) else "-" for b in ("chunk", "ar")]
        print(f"| {m} | {rate[m]:.2f} | {t['step_tokens'] / max(t['steps'], 1):.2f} | "
              f"{t['step_tokens'] / max(t['rounds'], 1):.2f} | {t['rounds']} | {busy} | {vs[0]} | {vs[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
