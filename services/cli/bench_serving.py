"""``flowring bench --concurrency K`` and ``--ttft``: serving measurements, run, printed and saved.

``--concurrency``: :mod:`services.bench.concurrency` (K in flight against one at a time, outputs
against their solo runs, per-request latency so a starved request shows). ``--ttft``:
:mod:`services.bench.ttft` (time to first token through the OpenAI API against the ring's own).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.cluster.settings import ClusterSpec
from common.prompts import Prompt
from services.bench import concurrency, service_load, ttft
from services.bench.concurrency import ConcurrencyResult
from services.bench.ttft import TtftResult
from services.launcher import client_for

WARMUP_MAX_NEW_TOKENS = 16
TTFT_TARGET = 1.10  # issue 9: HTTP within 10% of the ring's own time to first token


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    modes: tuple[str, ...]  # ring modes, each measured in turn
    concurrency: int  # 0: no concurrency run
    ttft_repeats: int  # 0: no time-to-first-token run
    options: dict[str, Any]  # GenerateRequest fields (mode aside): max_new_tokens, temperature, seed, links
    warmup: int  # uncounted short generations per mode first
    timeout_s: float


@dataclasses.dataclass(frozen=True)
class ServingReport:
    concurrency: tuple[ConcurrencyResult, ...]
    ttft: tuple[TtftResult, ...]

    def failed(self, greedy: bool) -> bool:
        """Whether a request failed, or (greedy) a concurrent output differs from its solo run."""
        return (any(r.failures() or (greedy and not all(r.equal())) for r in self.concurrency)
                or any(r.failures for r in self.ttft))

    def to_json(self) -> dict[str, Any]:
        return {"concurrency": [r.to_json() for r in self.concurrency], "ttft": [r.to_json() for r in self.ttft]}


def measure(spec: ClusterSpec, run_dir: Path, settings: ServingSettings, prompts: Sequence[Prompt],
            console: Console) -> ServingReport:
    """Every mode in turn: warm-up, then the concurrency run, then the time-to-first-token run."""
    connect = functools.partial(client_for, spec, settings.timeout_s)
    ids = _prompt_ids(spec, prompts) if settings.ttft_repeats else []
    together: list[ConcurrencyResult] = []
    firsts: list[TtftResult] = []
    for mode in settings.modes:
        options = {**settings.options, "mode": mode}
        _warm_up(connect, prompts[0], {**options, "max_new_tokens": WARMUP_MAX_NEW_TOKENS}, settings.warmup, console)
        if settings.concurrency:
            console.print(f"mode {mode}: {len(prompts)} prompts solo, then {settings.concurrency} in flight")
            urls = {place.name: place.metrics_url for place in spec.ring}
            together.append(concurrency.measure(connect, prompts, options, settings.concurrency,
                                                functools.partial(service_load.scrape, urls)))
        if settings.ttft_repeats:
            console.print(f"mode {mode}: time to first token, ring and HTTP, {settings.ttft_repeats} round(s)")
            with ttft.api_server(run_dir, mode) as url:
                firsts.append(ttft.measure(connect, url, ids, options, settings.ttft_repeats, settings.timeout_s))
    return ServingReport(tuple(together), tuple(firsts))


def _prompt_ids(spec: ClusterSpec, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids as the scheduler would make them, so both paths of ``--ttft`` prefill the same tokens."""
    from common.models.modeling import load_tokenizer
    from common.models.modeling.tokenizer import encode_prompt

    tokenizer = load_tokenizer(Path(spec.base))
    return [encode_prompt(tokenizer, p.text, raw=p.raw) for p in prompts]


def _warm_up(connect: concurrency.Connect, prompt: Prompt, options: dict[str, Any], count: int,
             console: Console) -> None:
    with connect() as client:
        for _ in range(count):
            run = concurrency.timed_generation(client, prompt, options)
            if not run.ok:
                console.print(f"[yellow]warm-up failed[/]: mode {options['mode']}: {escape(run.error)}")


def print_report(console: Console, spec: ClusterSpec, settings: ServingSettings, report: ServingReport) -> None:
    tokens = settings.options["max_new_tokens"]
    for r in report.concurrency:
        _print_concurrency(console, spec, r, tokens)
    if report.ttft:
        _print_ttft(console, report.ttft)


def _print_concurrency(console: Console, spec: ClusterSpec, r: ConcurrencyResult, max_new_tokens: int) -> None:
    a = spec.admission
    phases = Table(title=f"mode {r.mode}: {len(r.solo.runs)} prompts x up to {max_new_tokens} new tokens, solo then "
                         f"{r.concurrency} in flight (admission: {a.max_in_flight} in flight, {a.max_queued} queued)",
                   box=box.SIMPLE_HEAD, caption="tok/s: new tokens of every request / wall time of the phase. "
                   "ttft, latency: from sending the request (queueing included).")
    for header in ("phase", "ok/runs", "new tokens", "wall s", "tok/s", "median ttft ms", "p95 ttft ms",
                   "p95 latency ms", "max latency ms"):
        phases.add_column(header, justify="left" if header == "phase" else "right")
    for name, p in (("solo", r.solo), (f"{r.concurrency} in flight", r.together)):
        done = sum(run.ok for run in p.runs)
        phases.add_row(name, f"{done}/{len(p.runs)}", str(p.new_tokens), f"{p.wall_s:.2f}", f"{p.tokens_per_s:.2f}",
                       f"{p.ttft_median_ms:.0f}", f"{p.ttft_p95_ms:.0f}", f"{p.latency_p95_ms:.0f}",
                       f"{p.latency_max_ms:.0f}")
    console.print(phases)
    requests = Table(title="per request", box=box.SIMPLE_HEAD, caption="slowdown: concurrent latency / solo latency.")
    for header in ("prompt", "tokens", "solo ttft ms", "solo latency ms", "ttft ms", "latency ms", "slowdown",
                   "= solo"):
        requests.add_column(header, justify="left" if header == "prompt" else "right")
    for a_run, b_run, same, slow in zip(r.solo.runs, r.together.runs, r.equal(), r.slowdowns(), strict=True):
        requests.add_row(escape(a_run.prompt_id), str(len(b_run.token_ids)), f"{a_run.ttft_ms:.0f}",
                         f"{a_run.latency_ms:.0f}", f"{b_run.ttft_ms:.0f}", f"{b_run.latency_ms:.0f}",
                         f"{slow:.2f}" if slow is not None else "-", "yes" if same else "NO")
    console.print(requests)
    _print_service_load(console, r)
    equal = r.equal()
    console.print(f"aggregate tokens/s: solo {r.solo.tokens_per_s:.2f}, {r.concurrency} in flight "
                  f"{r.together.tokens_per_s:.2f}, speed-up {r.speedup:.2f}x; p95 latency {r.p95_latency_ratio:.2f}x "
                  f"solo; outputs equal to solo: {sum(equal)}/{len(equal)}")
    for run in r.failures():
        console.print(f"[red]failed[/]: prompt {escape(run.prompt_id)}: {escape(run.error)}")


def _print_service_load(console: Console, r: ConcurrencyResult) -> None:
    names = list(dict.fromkeys([*r.solo.services, *r.together.services]))
    if not names:
        return
    table = Table(title="per service (Prometheus, before and after each phase)", box=box.SIMPLE_HEAD,
                  caption="busy: busy seconds / phase wall time. rows, requests: per model forward (shared forwards).")
    for header in ("service", "solo busy", "solo rows/fwd", f"{r.concurrency} busy", f"{r.concurrency} rows/fwd",
                   f"{r.concurrency} requests/fwd"):
        table.add_column(header, justify="left" if header == "service" else "right")
    for name in names:
        a, b = r.solo.services.get(name), r.together.services.get(name)
        table.add_row(name, f"{a.busy_ratio:.2f}" if a else "-", f"{a.rows_per_forward:.1f}" if a else "-",
                      f"{b.busy_ratio:.2f}" if b else "-", f"{b.rows_per_forward:.1f}" if b else "-",
                      f"{b.requests_per_forward:.2f}" if b else "-")
    console.print(table)


def _print_ttft(console: Console, results: Sequence[TtftResult]) -> None:
    table = Table(title="time to first streamed token: OpenAI API (openai client, stream=True) vs ring (ZeroMQ)",
                  box=box.SIMPLE_HEAD, caption=f"http / ring: ratio of the medians (target <= {TTFT_TARGET:.2f}).")
    for header in ("mode", "rounds", "ring n", "ring median ms", "http n", "http median ms", "http / ring"):
        table.add_column(header, justify="left" if header == "mode" else "right")
    for r in results:
        table.add_row(r.mode, str(r.repeats), str(len(r.ring_ms)), f"{r.ring_median_ms:.1f}", str(len(r.http_ms)),
                      f"{r.http_median_ms:.1f}", f"{r.ratio:.3f}" if r.ratio else "-")
    console.print(table)
    for r in results:
        for failure in r.failures:
            console.print(f"[red]failed[/]: mode {r.mode}, {escape(failure)}")
