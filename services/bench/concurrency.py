"""Aggregate throughput of K requests in flight at once against the same prompts one at a time.

Every generation streams, so each request's time to first token is seen as its client sees it
(from sending the request, queueing at the scheduler included). A *phase* is one pass over the
prompts: solo (one after another on one connection) or concurrent (K workers, each with its own
connection, each taking the next prompt when its last one ends). Aggregate tokens/s of a phase:
new tokens of every request / wall time of the phase. Per phase, the median and the 95th percentile
(linear between the two nearest ranks, as numpy's default) of time to first token and of latency.
"""

from __future__ import annotations

import dataclasses
import queue
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from common.prompts import Prompt
from common.wire.client import GenerateChunk, GenerateReply
from common.wire.errors import ProtocolError
from services.bench.service_load import Counters, ServiceLoad, between
from services.client import Client, ClusterUnavailable

Connect = Callable[[], Client]
Scrape = Callable[[], dict[str, Counters]]  # every ring service's Prometheus counters now


@dataclasses.dataclass(frozen=True)
class TimedRun:
    """One streamed generation as its client saw it."""

    prompt_id: str
    ok: bool
    token_ids: tuple[int, ...] = ()
    ttft_ms: float = 0.0  # request sent -> first chunk
    latency_ms: float = 0.0  # request sent -> final reply
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Phase:
    runs: tuple[TimedRun, ...]  # in prompt order
    wall_s: float
    services: dict[str, ServiceLoad] = dataclasses.field(default_factory=dict)  # busy ratio, rows per forward

    @property
    def new_tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.runs if r.ok)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ttft_median_ms(self) -> float:
        done = [r.ttft_ms for r in self.runs if r.ok]
        return statistics.median(done) if done else 0.0

    @property
    def ttft_p95_ms(self) -> float:
        return percentile([r.ttft_ms for r in self.runs if r.ok], 95)

    @property
    def latency_p95_ms(self) -> float:
        return percentile([r.latency_ms for r in self.runs if r.ok], 95)

    @property
    def latency_max_ms(self) -> float:
        return max((r.latency_ms for r in self.runs if r.ok), default=0.0)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values``, linear between the two nearest ranks (0.0 when empty)."""
    if not values:
        return 0.0
    ranked = sorted(values)
    rank = (len(ranked) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ranked) - 1)
    return ranked[low] + (ranked[high] - ranked[low]) * (rank - low)


@dataclasses.dataclass(frozen=True)
class ConcurrencyResult:
    mode: str
    concurrency: int
    solo: Phase
    together: Phase

    @property
    def speedup(self) -> float:
        """Concurrent aggregate tokens/s over solo aggregate tokens/s."""
        return self.together.tokens_per_s / self.solo.tokens_per_s if self.solo.tokens_per_s else 0.0

    @property
    def p95_latency_ratio(self) -> float:
        """Concurrent p95 latency over solo p95 latency (what a user waits under load against alone)."""
        return self.together.latency_p95_ms / self.solo.latency_p95_ms if self.solo.latency_p95_ms else 0.0

    def equal(self) -> list[bool]:
        """Per prompt: both runs succeeded with the same output tokens."""
        return [a.ok and b.ok and a.token_ids == b.token_ids
                for a, b in zip(self.solo.runs, self.together.runs, strict=True)]

    def slowdowns(self) -> list[float | None]:
        """Per prompt: concurrent latency / solo latency (a starved request stands out); None if either failed."""
        return [b.latency_ms / a.latency_ms if a.ok and b.ok and a.latency_ms else None
                for a, b in zip(self.solo.runs, self.together.runs, strict=True)]

    def failures(self) -> list[TimedRun]:
        return [r for r in (*self.solo.runs, *self.together.runs) if not r.ok]

    def to_json(self) -> dict[str, Any]:
        def phase(p: Phase) -> dict[str, Any]:
            return {"new_tokens": p.new_tokens, "wall_s": p.wall_s, "tokens_per_s": p.tokens_per_s,
                    "ttft_ms_median": p.ttft_median_ms, "ttft_ms_p95": p.ttft_p95_ms,
                    "latency_ms_p95": p.latency_p95_ms, "latency_ms_max": p.latency_max_ms,
                    "services": {name: load.to_json() for name, load in p.services.items()}}

        def run(r: TimedRun) -> dict[str, Any]:
            return {"ok": r.ok, "new_tokens": len(r.token_ids), "ttft_ms": r.ttft_ms, "latency_ms": r.latency_ms,
                    "error": r.error}

        equal = self.equal()
        return {
            "mode": self.mode, "concurrency": self.concurrency, "solo": phase(self.solo),
            "concurrent": phase(self.together), "speedup": self.speedup, "p95_latency_ratio": self.p95_latency_ratio,
            "equal_to_solo": {"equal": sum(equal), "compared": len(equal)},
            "requests": [{"prompt_id": a.prompt_id, "solo": run(a), "concurrent": run(b), "equal": same,
                          "slowdown": slow}
                         for a, b, same, slow in zip(self.solo.runs, self.together.runs, equal, self.slowdowns(),
                                                     strict=True)],
        }


def timed_generation(client: Client, prompt: Prompt, options: dict[str, Any]) -> TimedRun:
    """Stream one generation to its end, timing its first chunk and its final reply."""
    started = time.perf_counter()
    first: float | None = None
    reply: GenerateReply | None = None
    try:
        for msg in client.stream(prompt.text, raw=prompt.raw, **options):
            if isinstance(msg, GenerateChunk) and first is None:
                first = time.perf_counter()
            elif isinstance(msg, GenerateReply):
                reply = msg
    except (ClusterUnavailable, ProtocolError) as exc:
        return TimedRun(prompt.id, False, error=str(exc))
    ended = time.perf_counter()
    assert reply is not None  # the stream ends with the final reply
    if not reply.ok:
        return TimedRun(prompt.id, False, error=reply.error or reply.code or "no error given")
    return TimedRun(prompt.id, True, tuple(reply.token_ids), ((first or ended) - started) * 1000,
                    (ended - started) * 1000)


def run_solo(connect: Connect, prompts: Sequence[Prompt], options: dict[str, Any]) -> Phase:
    started = time.perf_counter()
    with connect() as client:
        runs = tuple(timed_generation(client, p, options) for p in prompts)
    return Phase(runs, time.perf_counter() - started)


def run_concurrent(connect: Connect, prompts: Sequence[Prompt], options: dict[str, Any], concurrency: int) -> Phase:
    """``concurrency`` workers, each on its own connection, drain the prompts; at most that many in flight."""
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(prompts)):
        todo.put(i)
    runs: list[TimedRun | None] = [None] * len(prompts)

    def worker() -> None:
        with connect() as client:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:  # every prompt taken: this worker is done
                    return
                runs[i] = timed_generation(client, prompts[i], options)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, len(prompts)))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall_s = time.perf_counter() - started
    return Phase(tuple(r or TimedRun(p.id, False, error="worker died") for r, p in zip(runs, prompts, strict=True)),
                 wall_s)


def measure(connect: Connect, prompts: Sequence[Prompt], options: dict[str, Any], concurrency: int,
            scrape: Scrape | None = None) -> ConcurrencyResult:
    """Solo, then concurrent, on the same cluster with the same options; ``scrape``: each phase also records
    every service's busy ratio and rows and requests per forward."""
    def phase(run: Callable[[], Phase]) -> Phase:
        before = scrape() if scrape else {}
        done = run()
        return dataclasses.replace(done, services=between(before, scrape(), done.wall_s)) if scrape else done

    solo = phase(lambda: run_solo(connect, prompts, options))
    together = phase(lambda: run_concurrent(connect, prompts, options, concurrency))
    return ConcurrencyResult(options.get("mode", ""), concurrency, solo, together)
