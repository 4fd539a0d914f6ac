"""A `flowring bench` run's settings, and what it prints and saves: the report table, the overhead lines and
the JSON result."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.cluster.settings import ClusterSpec
from common.observability import trace
from common.observability.bench_report import (
    SPEEDUP_BASELINES,
    ModeSummary,
    RunRecord,
    agreement,
    service_order,
)
from common.projection.ahead import DRAINING_LOOP
from common.wire.link import LinkSettings
from services.cli.errors import fail


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    prompts: str
    modes: tuple[str, ...]
    num_prompts: int
    max_new_tokens: int
    temperature: float
    seed: int
    link_mbps: float
    link_latency_ms: float
    warmup: int
    timeout_s: float
    trace: bool = False

    def options(self, max_new_tokens: int | None = None) -> dict[str, Any]:
        """GenerateRequest fields shared by every run (the mode and prompt aside)."""
        return {"max_new_tokens": max_new_tokens or self.max_new_tokens, "temperature": self.temperature,
                "seed": self.seed, "link_mbps": self.link_mbps, "link_latency_ms": self.link_latency_ms,
                "trace": self.trace}


def print_overhead(console: Console, traced: list[dict[str, Any]]) -> None:
    """Per mode and service: model time per forward against the time spent outside the model."""
    table = Table(title="time per forward, from the traces", box=box.SIMPLE_HEAD, caption=(
        "model: forward (stages, verifier head) or draft spans; outside: receive, send, prune, verify, schedule."))
    for header in ("mode", "service", "forwards", "model ms/fwd", "outside ms/fwd", "outside / model"):
        table.add_column(header, justify="left" if header in ("mode", "service") else "right")
    for mode in dict.fromkeys(t["mode"] for t in traced):
        spans: dict[str, list[int]] = {}
        for t in (t for t in traced if t["mode"] == mode):
            for name, flat in t["spans"].items():
                spans.setdefault(name, []).extend(flat)
        for name in sorted(spans, key=service_order):
            model_ms, outside_ms, forwards = trace.per_forward(spans[name])
            if forwards:
                table.add_row(mode, name, str(forwards), f"{model_ms:.2f}", f"{outside_ms:.2f}",
                              f"{outside_ms / model_ms:.1%}" if model_ms else "-")
    console.print(table)


def traced_requests(records: list[RunRecord]) -> list[dict[str, Any]]:
    return [{"label": f"{r.mode} {r.prompt_id}", "mode": r.mode, "spans": r.stats["trace"]}
            for r in records if r.ok and "trace" in r.stats]


def last_per_mode(traced: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({t["mode"]: t for t in traced}.values())


def write_json(
    path: Path, settings: BenchSettings, machine: dict[str, Any], started: datetime, command: str,
    spec: ClusterSpec, records: list[RunRecord], summaries: list[ModeSummary],
) -> None:
    payload = {
        "settings": dataclasses.asdict(settings),
        **header(machine, started, command, spec),
        "records": [dataclasses.asdict(r) for r in records],
        "failures": [{"mode": r.mode, "prompt_id": r.prompt_id, "error": r.error} for r in records if not r.ok],
        "summary": [dataclasses.asdict(s) for s in summaries],
        "equal_to_local": {mode: {"equal": e, "compared": n} for mode, (e, n) in agreement(records).items()},
    }
    save(path, payload)


def header(machine: dict[str, Any], started: datetime, command: str, spec: ClusterSpec) -> dict[str, Any]:
    return {"machine": machine, "date": started.isoformat(timespec="seconds"), "command": command,
            "cluster": json.loads(spec.to_json()), "drafter_loop": DRAINING_LOOP}


def save(path: Path, payload: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        fail(f"cannot write {path}: {exc}")


def title(settings: BenchSettings, machine: dict[str, Any]) -> str:
    link = (f"link {settings.link_mbps:g} Mbps, {settings.link_latency_ms:g} ms" if
            LinkSettings(settings.link_mbps, settings.link_latency_ms).shaped else "unshaped links")
    return (f"{settings.num_prompts} prompts from {Path(settings.prompts).name}, {settings.max_new_tokens} new tokens, "
            f"T={settings.temperature:g}, {link}; {machine['cpu']} ({machine['cores']} cores)")


def print_report(
    console: Console, settings: BenchSettings, machine: dict[str, Any], started: datetime, command: str,
    records: list[RunRecord], summaries: list[ModeSummary],
) -> None:
    print_header(console, machine, started, command)
    services = sorted({name for s in summaries for name in s.busy_ratio}, key=service_order)
    table = Table(title=title(settings, machine), box=box.SIMPLE_HEAD, caption=(
        "tok/s pooled: total tokens / total time. speedup vs chunk, vs ar: ratio of decode tokens/s, each "
        "total decode tokens / total decode time over the prompts both modes completed. busy: busy time / wall "
        "time. acc: accepted draft tokens; step: one verification. = local: prompts whose output equals the local "
        "baseline's, of those both completed."))
    headers = ["mode", "ok/runs", "decode tok/s", "e2e tok/s", "acc/step", "tok/step", "tok/round", "rounds",
               *(f"busy {name}" for name in services), "busy drafter", "drafter ms/step",
               *(f"speedup vs {b}" for b in SPEEDUP_BASELINES), "= local"]
    same = agreement(records)
    for header in headers:
        table.add_column(header, justify="left" if header == "mode" else "right", no_wrap=header == "mode")
    for s in summaries:
        speedups = [f"{s.speedup[b]:.2f}" if s.speedup.get(b) is not None else "-" for b in SPEEDUP_BASELINES]
        table.add_row(
            s.mode, f"{s.runs}/{s.runs + s.failures}", f"{s.decode_tokens_per_s:.1f}", f"{s.tokens_per_s:.1f}",
            f"{s.accepted_per_step:.2f}", f"{s.tokens_per_step:.2f}", f"{s.tokens_per_round:.2f}",
            f"{s.rounds_per_run:.1f}", *(f"{s.busy_ratio.get(name, 0.0):.2f}" for name in services),
            f"{s.drafter_busy_ratio:.2f}", f"{s.drafter_ms_per_step:.1f}", *speedups,
            "{}/{}".format(*same[s.mode]) if s.mode in same else "-",
        )
    console.print(table)
    failures = [r for r in records if not r.ok]
    for r in failures:
        console.print(f"[red]failed[/]: mode {r.mode}, prompt {escape(r.prompt_id)}: {escape(r.error)}")


def print_header(console: Console, machine: dict[str, Any], started: datetime, command: str) -> None:
    console.print(f"machine: {machine['platform']}; {machine['cpu']}; {machine['cores']} cores")
    console.print(f"date:    {started.isoformat(timespec='seconds')}")
    console.print(f"command: {command}", soft_wrap=True, markup=False)
