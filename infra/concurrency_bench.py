"""Aggregate throughput of K concurrent requests against one at a time, on a running cluster.

Usage: python infra/concurrency_bench.py --concurrency 4 [--run-dir DIR] [--prompts FILE.jsonl|humaneval]
           [--num-prompts 8] [--max-new-tokens 64] [--mode flowspec]

Runs every prompt alone, one after another (solo), then all of them with K in flight at once
(each worker its own connection, taking the next prompt when its last one ends). Prints the
aggregate tokens/s of both phases (new tokens / wall time of the phase), their ratio, and whether
every concurrent output equals its solo run (greedy, T = 0). Exit status 1 if any differs or fails.
"""

from __future__ import annotations

import argparse
import platform
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.prompts import Prompt, load_prompts  # noqa: E402
from common.protocol import GenerateReply  # noqa: E402
from common.settings import ClusterSpec  # noqa: E402
from services.launcher import client_for, default_run_dir  # noqa: E402


def run_solo(spec: ClusterSpec, prompts: list[Prompt], options: dict) -> tuple[list[GenerateReply], float]:
    started = time.perf_counter()
    with client_for(spec) as client:
        replies = [client.generate(p.text, raw=p.raw, **options) for p in prompts]
    return replies, time.perf_counter() - started


def run_concurrent(spec: ClusterSpec, prompts: list[Prompt], options: dict,
                   concurrency: int) -> tuple[list[GenerateReply | None], float]:
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(prompts)):
        todo.put(i)
    replies: list[GenerateReply | None] = [None] * len(prompts)

    def worker() -> None:
        with client_for(spec) as client:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:  # every prompt taken: this worker is done
                    return
                replies[i] = client.generate(prompts[i].text, raw=prompts[i].raw, **options)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return replies, time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=default_run_dir())
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--prompts", default=str(Path(__file__).parent / "data" / "code_prompts.jsonl"))
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--mode", default="flowspec")
    args = p.parse_args()
    spec = ClusterSpec.load(args.run_dir / "cluster.json")
    prompts = load_prompts(args.prompts, args.num_prompts)
    options = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0, "mode": args.mode}
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"base {Path(spec.base).name}, {len(spec.stages)} stages, {len(prompts)} prompts x "
          f"{args.max_new_tokens} tokens, mode {args.mode}, concurrency {args.concurrency}, "
          f"admission {spec.admission}")
    with client_for(spec) as client:  # warm-up: first-call costs stay out of both phases
        client.generate(prompts[0].text, raw=prompts[0].raw, **{**options, "max_new_tokens": 4})
    solo, solo_s = run_solo(spec, prompts, options)
    together, together_s = run_concurrent(spec, prompts, options, args.concurrency)
    failed = [i for i, r in enumerate(solo + together) if r is None or not r.ok]
    differ = [i for i, (a, b) in enumerate(zip(solo, together, strict=True))
              if b is None or a.token_ids != b.token_ids]
    solo_tokens = sum(len(r.token_ids) for r in solo)
    together_tokens = sum(len(r.token_ids) for r in together if r is not None)
    solo_rate, together_rate = solo_tokens / solo_s, together_tokens / together_s
    print(f"solo:       {solo_tokens} tokens in {solo_s:.2f} s = {solo_rate:.2f} tokens/s")
    print(f"concurrent: {together_tokens} tokens in {together_s:.2f} s = {together_rate:.2f} tokens/s")
    print(f"speed-up {together_rate / solo_rate:.2f}x; outputs equal to solo: {len(prompts) - len(differ)}"
          f"/{len(prompts)}; failures: {len(failed)}")
    for i in failed:
        reply = (solo + together)[i]
        print(f"  failed: {reply.error if reply else 'no reply'}")
    return 1 if failed or differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
