"""``flowring bench``: every decoding mode on the running cluster, prompt by prompt, then one table.

Modes run back to back on each prompt (interleaved, so drift hits all alike) after an uncounted
warm-up. A failed generation is reported and left out of the summary; the command exits 1 when a
mode failed on every prompt. Summary maths: :mod:`common.bench_report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.bench_report import SPEEDUP_BASELINES, ModeSummary, RunRecord, service_order, summarize
from common.link import LinkError, LinkSettings
from common.prompts import Prompt, PromptFileError, load_prompts
from common.protocol import MODES, ProtocolError
from common.settings import ClusterSpec
from services.cli.bench_plot import PlotError, write_plot
from services.client import Client, ClusterUnavailable
from services.launcher import client_for, default_run_dir

WARMUP_MAX_NEW_TOKENS = 16
DEFAULT_RUN_DIR = default_run_dir()

app = typer.Typer(add_completion=False, help="Benchmark the decoding modes on the running cluster.")


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

    def options(self, max_new_tokens: int | None = None) -> dict[str, Any]:
        """GenerateRequest fields shared by every run (the mode and prompt aside)."""
        return {"max_new_tokens": max_new_tokens or self.max_new_tokens, "temperature": self.temperature,
                "seed": self.seed, "link_mbps": self.link_mbps, "link_latency_ms": self.link_latency_ms}


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.callback(invoke_without_command=True)
def bench(
    prompts: Annotated[str, typer.Option(help="JSONL prompt file (MT-bench/Spec-Bench or HumanEval), or humaneval.")],
    json_out: Annotated[Path, typer.Option("--json", help="Where to write settings, per-run stats and summary.")],
    modes: Annotated[str, typer.Option(help=f"Comma-separated modes among {', '.join(MODES)}.")] = ",".join(MODES),
    num_prompts: Annotated[int, typer.Option(min=1, help="Prompts taken from the top of the file.")] = 10,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    link_mbps: Annotated[float, typer.Option(min=0.0, help="Emulated bandwidth of every hop (0: unlimited).")] = 0.0,
    link_latency_ms: Annotated[float, typer.Option(min=0.0, help="Emulated one-way latency of every hop.")] = 0.0,
    warmup: Annotated[int, typer.Option(min=0, help="Uncounted short generations per mode first.")] = 1,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of throughput and busy ratios.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one generation.")] = 600.0,
    run_dir: Annotated[Path, typer.Option("--run-dir", envvar="FLOWRING_RUN_DIR",
                                          help="Where the cluster keeps state.")] = DEFAULT_RUN_DIR,
) -> None:
    """Run every mode on each prompt against the running cluster; print and save the comparison."""
    mode_list = tuple(dict.fromkeys(m.strip() for m in modes.split(",") if m.strip()))
    unknown = [m for m in mode_list if m not in MODES]
    if not mode_list or unknown:
        _fail(f"--modes must name some of {', '.join(MODES)}, not {modes!r}")
    try:
        LinkSettings(link_mbps, link_latency_ms)
        prompt_list = load_prompts(prompts, num_prompts)
    except (LinkError, PromptFileError) as exc:
        _fail(str(exc))
    cluster_file = run_dir / "cluster.json"
    if not cluster_file.exists():
        _fail(f"no cluster in {run_dir}: start one with `flowring up`")
    spec = ClusterSpec.load(cluster_file)
    settings = BenchSettings(prompts, mode_list, len(prompt_list), max_new_tokens, temperature, seed, link_mbps,
                             link_latency_ms, warmup, timeout)
    console = Console(width=max(Console().width, 200))
    started = datetime.now(UTC)
    with client_for(spec, timeout) as client:
        _warm_up(client, settings, prompt_list[0], console)
        records = _run_all(client, settings, prompt_list, console)
    summaries = summarize(records, SPEEDUP_BASELINES)
    machine = machine_info()
    command = shlex.join(sys.argv)
    _write_json(json_out, settings, machine, started, command, spec, records, summaries)
    _print_report(console, settings, machine, started, command, records, summaries)
    if plot is not None:
        try:
            write_plot(summaries, plot, _title(settings, machine))
        except PlotError as exc:
            _fail(str(exc))
        typer.echo(f"plot: {plot}")
    typer.echo(f"json: {json_out}")
    dead = [s.mode for s in summaries if s.runs == 0]
    if dead:
        _fail(f"mode(s) {', '.join(dead)} failed on every prompt")


def machine_info() -> dict[str, Any]:
    """Platform, CPU model (from /proc/cpuinfo where there is one) and logical core count."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count() or 0,
            "python": platform.python_version(), "host": platform.node()}


def _warm_up(client: Client, settings: BenchSettings, prompt: Prompt, console: Console) -> None:
    options = settings.options(min(settings.max_new_tokens, WARMUP_MAX_NEW_TOKENS))
    for mode in settings.modes:
        for _ in range(settings.warmup):
            record = _generate(client, prompt, mode, options)
            if not record.ok:
                console.print(f"[yellow]warm-up failed[/]: mode {mode}, prompt {escape(prompt.id)}: "
                              f"{escape(record.error)}")


def _run_all(client: Client, settings: BenchSettings, prompts: list[Prompt], console: Console) -> list[RunRecord]:
    records: list[RunRecord] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(prompts) * len(settings.modes))
        for i, prompt in enumerate(prompts, start=1):
            for mode in settings.modes:
                progress.update(task, description=f"prompt {i}/{len(prompts)} ({prompt.id}) {mode:<8}")
                record = _generate(client, prompt, mode, settings.options())
                if not record.ok:
                    progress.console.print(f"[red]failed[/]: mode {mode}, prompt {escape(prompt.id)}: "
                                           f"{escape(record.error)}")
                records.append(record)
                progress.advance(task)
    return records


def _generate(client: Client, prompt: Prompt, mode: str, options: dict[str, Any]) -> RunRecord:
    try:
        reply = client.generate(prompt.text, raw=prompt.raw, mode=mode, **options)
    except (ClusterUnavailable, ProtocolError) as exc:
        return RunRecord(prompt.id, mode, False, error=str(exc), category=prompt.category)
    if not reply.ok:
        return RunRecord(prompt.id, mode, False, error=reply.error or "no error given", category=prompt.category)
    return RunRecord(prompt.id, mode, True, dict(reply.stats), category=prompt.category)


def _write_json(
    path: Path, settings: BenchSettings, machine: dict[str, Any], started: datetime, command: str,
    spec: ClusterSpec, records: list[RunRecord], summaries: list[ModeSummary],
) -> None:
    payload = {
        "settings": dataclasses.asdict(settings),
        "machine": machine,
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "cluster": json.loads(spec.to_json()),
        "records": [dataclasses.asdict(r) for r in records],
        "failures": [{"mode": r.mode, "prompt_id": r.prompt_id, "error": r.error} for r in records if not r.ok],
        "summary": [dataclasses.asdict(s) for s in summaries],
    }
    try:
        path.write_text(json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        _fail(f"cannot write {path}: {exc}")


def _title(settings: BenchSettings, machine: dict[str, Any]) -> str:
    link = (f"link {settings.link_mbps:g} Mbps, {settings.link_latency_ms:g} ms" if
            LinkSettings(settings.link_mbps, settings.link_latency_ms).shaped else "unshaped links")
    return (f"{settings.num_prompts} prompts from {Path(settings.prompts).name}, {settings.max_new_tokens} new tokens, "
            f"T={settings.temperature:g}, {link}; {machine['cpu']} ({machine['cores']} cores)")


def _print_report(
    console: Console, settings: BenchSettings, machine: dict[str, Any], started: datetime, command: str,
    records: list[RunRecord], summaries: list[ModeSummary],
) -> None:
    console.print(f"machine: {machine['platform']}; {machine['cpu']}; {machine['cores']} cores")
    console.print(f"date:    {started.isoformat(timespec='seconds')}")
    console.print(f"command: {command}", soft_wrap=True, markup=False)
    services = sorted({name for s in summaries for name in s.busy_ratio}, key=service_order)
    table = Table(title=_title(settings, machine), box=box.SIMPLE_HEAD, caption=(
        "tok/s pooled: total tokens / total time. speedup vs chunk, vs ar: ratio of decode tokens/s, each "
        "total decode tokens / total decode time over the prompts both modes completed. busy: busy time / wall "
        "time. acc: accepted draft tokens; step: one verification."))
    headers = ["mode", "ok/runs", "decode tok/s", "e2e tok/s", "acc/step", "tok/step", "tok/round", "rounds",
               *(f"busy {name}" for name in services), "busy drafter", "drafter ms/step",
               *(f"speedup vs {b}" for b in SPEEDUP_BASELINES)]
    for header in headers:
        table.add_column(header, justify="left" if header == "mode" else "right", no_wrap=header == "mode")
    for s in summaries:
        speedups = [f"{s.speedup[b]:.2f}" if s.speedup.get(b) is not None else "-" for b in SPEEDUP_BASELINES]
        table.add_row(
            s.mode, f"{s.runs}/{s.runs + s.failures}", f"{s.decode_tokens_per_s:.1f}", f"{s.tokens_per_s:.1f}",
            f"{s.accepted_per_step:.2f}", f"{s.tokens_per_step:.2f}", f"{s.tokens_per_round:.2f}",
            f"{s.rounds_per_run:.1f}", *(f"{s.busy_ratio.get(name, 0.0):.2f}" for name in services),
            f"{s.drafter_busy_ratio:.2f}", f"{s.drafter_ms_per_step:.1f}", *speedups,
        )
    console.print(table)
    failures = [r for r in records if not r.ok]
    for r in failures:
        console.print(f"[red]failed[/]: mode {r.mode}, prompt {escape(r.prompt_id)}: {escape(r.error)}")
