"""``flowring bench``: every decoding mode side by side, prompt by prompt, then one table.

Modes run back to back on each prompt (interleaved, so drift hits all alike) after an uncounted
warm-up. ``local`` is the anchor: transformers' own ``generate`` of the whole base model in one
process on one stage's cores. By default the modes run on the running cluster; ``--pin`` starts a
cluster for the run with every service on cores of its own (a 16-core host emulating a LAN of
boards) and stops it afterwards. ``--trace`` records every service's timeline. A failed generation
is reported and left out of the summary; the command exits 1 when a mode failed on every prompt.
Summary maths: :mod:`common.observability.bench_report`. ``--concurrency K`` and ``--ttft`` measure serving
instead (:mod:`services.cli.bench_serving`): K requests in flight against one at a time, and time
to first token through the OpenAI API against the ring's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common.cluster.settings import Admission, ClusterSpec
from common.cluster.spec_builder import ClusterRequest
from common.models.dtypes import model_dtype_problem
from common.observability import trace
from common.observability.bench_report import (
    LOCAL,
    SPEEDUP_BASELINES,
    RunRecord,
    summarize,
)
from common.prompts import Prompt, PromptFileError, load_prompts
from common.speculation.modes import MODES, DraftSettings
from common.speculation.tree_options import TREE_HELP, parse_tree_options
from common.wire.errors import ProtocolError
from common.wire.link import LinkError, LinkSettings
from services.bench.local_baseline import BaselineError, BaselineWorker
from services.bench.pinning import PinError, pinning_for, stage_cpus
from services.bench.ttft import TtftError
from services.cli import bench_serving
from services.cli.bench_output import (
    BenchSettings,
    header,
    last_per_mode,
    print_header,
    print_overhead,
    print_report,
    save,
    title,
    traced_requests,
    write_json,
)
from services.cli.bench_plot import PlotError, write_plot, write_timeline
from services.cli.errors import fail
from services.client import Client, ClusterUnavailable
from services.launcher import LaunchError, client_for, local_spec, start, stop
from services.run_folder import RunFolder, default_run_dir

WARMUP_MAX_NEW_TOKENS = 16
DEFAULT_RUN_DIR = default_run_dir()

app = typer.Typer(add_completion=False, help="Benchmark the decoding modes on the running cluster.")


@dataclasses.dataclass(frozen=True)
class PinnedCluster:
    """``--pin``: a cluster started for the run, every service on ``cores_per_service`` cores of its own."""

    base: str
    draft: str
    stages: int
    cores_per_service: int
    dtype: str
    draft_settings: DraftSettings
    draft_head: str = ""  # a head folder: draft with it instead of the draft model
    layer_ranges: tuple[tuple[int, int], ...] = ()  # explicit [start, end) per stage; even split if empty
    draft_vocab: int = 0  # the draft model proposes only its N most frequent tokens; 0: every token
    row_invariant: bool = True  # stages and verifier compute each row as alone (False: fused kernels)



BENCH_MODES = (LOCAL, *MODES)


@app.callback(invoke_without_command=True)
def bench(
    prompts: Annotated[str, typer.Option(help="JSONL prompt file (MT-bench/Spec-Bench or HumanEval), or humaneval.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Where to write settings, per-run stats and summary "
                                                                "(default: RUN_DIR/bench/bench-DATE.json).")] = None,
    modes: Annotated[str, typer.Option(help=f"Comma-separated modes among {', '.join(BENCH_MODES)} (default: all; "
                                            "with --concurrency or --ttft, the cluster's default mode).")] = "",
    num_prompts: Annotated[int, typer.Option(min=1, help="Prompts taken from the top of the file.")] = 10,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    link_mbps: Annotated[float, typer.Option(min=0.0, help="Emulated bandwidth of every hop (0: unlimited).")] = 0.0,
    link_latency_ms: Annotated[float, typer.Option(min=0.0, help="Emulated one-way latency of every hop.")] = 0.0,
    warmup: Annotated[int, typer.Option(min=0, help="Uncounted short generations per mode first.")] = 1,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of throughput and busy ratios (and, with "
                                                   "--trace, PLOT-timeline.png).")] = None,
    trace_out: Annotated[Path | None, typer.Option("--trace", help="Write every service's timeline as "
                                                   "Chrome/Perfetto trace-event JSON.")] = None,
    pin: Annotated[bool, typer.Option(help="Start a cluster for the run, every service pinned to cores of its "
                                           "own (taskset), instead of using the running one.")] = False,
    model: Annotated[str, typer.Option(help="--pin: catalog pair, unless --base/--draft.")] = "qwen-coder",
    base: Annotated[str, typer.Option(help="--pin: base model (catalog name, folder or .gguf).")] = "",
    draft: Annotated[str, typer.Option(help="--pin: draft model (catalog name, folder or .gguf).")] = "",
    draft_head: Annotated[str, typer.Option(help="--pin: draft with this head folder instead of the draft model.")] = "",
    draft_vocab: Annotated[int, typer.Option(min=0, help="--pin: the draft model proposes only its N most frequent "
                                                         "tokens; 0: every token.")] = 0,
    stages: Annotated[int, typer.Option(min=1, help="--pin: pipeline stages (boards).")] = 2,
    layers: Annotated[str, typer.Option(help="--pin: explicit layer ranges per stage instead of an even split, "
                                             "e.g. 0-5,5-11,11-18,18-28 (sets the stage count).")] = "",
    cores_per_service: Annotated[int, typer.Option(min=1, help="--pin: cores each service gets.")] = 2,
    dtype: Annotated[str, typer.Option(help="--pin: float32 or bfloat16.")] = "bfloat16",
    row_invariant: Annotated[bool, typer.Option("--row-invariant/--fused-numerics", help="--pin: rows computed "
                                                "bitwise as alone (reproducible), or the faster fused kernels.")] = True,
    tree: Annotated[list[str] | None, typer.Option("--tree", help=f"--pin: {TREE_HELP}")] = None,
    concurrency: Annotated[int, typer.Option(min=0, help="Instead of comparing modes: run the prompts one at a "
                                                          "time, then with this many in flight at once.")] = 0,
    ttft: Annotated[bool, typer.Option("--ttft", help="Instead of comparing modes: time to first streamed token "
                                                      "through the OpenAI API (started for the run) vs the ring's "
                                                      "own.")] = False,
    repeats: Annotated[int, typer.Option(min=1, help="--ttft: rounds over the prompts.")] = 5,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one generation.")] = 600.0,
    run_dir: Annotated[Path, typer.Option("--run-dir", envvar="FLOWRING_RUN_DIR",
                                          help="Where the cluster keeps state.")] = DEFAULT_RUN_DIR,
) -> None:
    """Run every mode on each prompt side by side; print and save the comparison."""
    serving = bool(concurrency or ttft)
    mode_list = tuple(dict.fromkeys(m.strip() for m in modes.split(",") if m.strip()))
    unknown = [m for m in mode_list if m not in BENCH_MODES]
    if (modes and not mode_list) or unknown:
        fail(f"--modes must name some of {', '.join(BENCH_MODES)}, not {modes!r}")
    if serving and (plot or trace_out):
        fail("--plot and --trace go with the mode comparison, not with --concurrency or --ttft")
    if serving and LOCAL in mode_list:
        fail(f"--concurrency and --ttft measure the ring: --modes cannot include {LOCAL}")
    mode_list = mode_list or (() if serving else BENCH_MODES)
    try:
        LinkSettings(link_mbps, link_latency_ms)
        prompt_list = load_prompts(prompts, num_prompts)
    except (LinkError, PromptFileError) as exc:
        fail(str(exc))
    settings = BenchSettings(prompts, mode_list, len(prompt_list), max_new_tokens, temperature, seed, link_mbps,
                             link_latency_ms, warmup, timeout, trace_out is not None)
    if pin:
        pinned = _pinned_cluster(model, base, draft, stages, cores_per_service, dtype, tree or [], draft_head, layers,
                                 draft_vocab, row_invariant)
        spec, own_run_dir = _start_pinned(pinned, in_flight=concurrency)
    else:
        cluster_file = RunFolder(run_dir).cluster
        if not cluster_file.exists():
            fail(f"no cluster in {run_dir}: start one with `flowring up`, or pass --pin")
        spec, own_run_dir = ClusterSpec.load(cluster_file), None
    console = Console(width=max(Console().width, 280))
    started = datetime.now(UTC)
    json_out = json_out or default_json(run_dir, started)
    if serving:
        plan = bench_serving.ServingSettings(mode_list or (spec.default_mode,), concurrency, repeats if ttft else 0,
                                             settings.options(), warmup, timeout)
        _serve_bench(spec, own_run_dir or run_dir, plan, prompt_list, console, json_out, started, own_run_dir)
        return
    try:
        with client_for(spec, timeout) as client, _baseline(spec, mode_list) as local:
            runner = _Runner(client, local, settings)
            _warm_up(runner, settings, prompt_list[0], console)
            records = _run_all(runner, settings, prompt_list, console)
    except BaselineError as exc:
        fail(str(exc))
    finally:
        if own_run_dir is not None:
            stop(own_run_dir)
    summaries = summarize(records, SPEEDUP_BASELINES)
    machine = machine_info()
    command = shlex.join(sys.argv)
    write_json(json_out, settings, machine, started, command, spec, records, summaries)
    print_report(console, settings, machine, started, command, records, summaries)
    traced = traced_requests(records) if trace_out is not None else []
    if traced:
        print_overhead(console, traced)
    if trace_out is not None:
        try:
            trace_out.write_text(json.dumps(trace.chrome_trace(traced)) + "\n")
        except OSError as exc:
            fail(f"cannot write {trace_out}: {exc}")
        typer.echo(f"trace: {trace_out} (open in ui.perfetto.dev or chrome://tracing)")
    if plot is not None:
        try:
            write_plot(summaries, plot, title(settings, machine))
            typer.echo(f"plot: {plot}")
            if traced:
                timeline = plot.with_name(f"{plot.stem}-timeline{plot.suffix or '.png'}")
                write_timeline(last_per_mode(traced), timeline, title(settings, machine))
                typer.echo(f"timeline: {timeline}")
        except PlotError as exc:
            fail(str(exc))
    typer.echo(f"json: {json_out}")
    dead = [s.mode for s in summaries if s.runs == 0]
    if dead:
        fail(f"mode(s) {', '.join(dead)} failed on every prompt")


def _serve_bench(spec: ClusterSpec, cluster_dir: Path, plan: bench_serving.ServingSettings, prompts: list[Prompt],
                 console: Console, json_out: Path, started: datetime, own_run_dir: Path | None) -> None:
    """``--concurrency`` / ``--ttft``: measure, print, save; exit 1 on a failure or a greedy output unequal to solo."""
    try:
        report = bench_serving.measure(spec, cluster_dir, plan, prompts, console)
    except TtftError as exc:
        fail(str(exc))
    finally:
        if own_run_dir is not None:
            stop(own_run_dir)
    machine, command = machine_info(), shlex.join(sys.argv)
    payload = {"settings": dataclasses.asdict(plan), "num_prompts": len(prompts), "prompts": [p.id for p in prompts],
               **header(machine, started, command, spec), **report.to_json()}
    save(json_out, payload)
    print_header(console, machine, started, command)
    bench_serving.print_report(console, spec, plan, report)
    typer.echo(f"json: {json_out}")
    if report.failed(greedy=plan.options["temperature"] == 0):
        fail("a request failed, or a concurrent output differs from its solo run (see above)")


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


def _pinned_cluster(model: str, base: str, draft: str, stages: int, cores: int, dtype: str, tree: list[str],
                    draft_head: str, layers: str = "", draft_vocab: int = 0,
                    row_invariant: bool = True) -> PinnedCluster:
    from common.cluster.partition import explicit_ranges
    from common.models.catalog import ModelStoreError, default_pair
    from common.models.modeling import load_model_spec
    from common.models.store import resolve

    if problem := model_dtype_problem(dtype):
        fail(f"--{problem}")
    if draft_vocab and draft_head:
        fail("--draft-vocab applies to a draft model; a head's vocabulary was chosen when it was trained")
    try:
        settings = parse_tree_options(tree)
        if not (base and draft):
            base, draft = default_pair(model)
        base_dir, draft_dir = resolve(base), resolve(draft)
        ranges = tuple(explicit_ranges(layers, load_model_spec(base_dir).num_layers)) if layers else ()
    except (KeyError, ValueError, TypeError, ModelStoreError) as exc:
        fail(str(exc))
    head = str(Path(draft_head).resolve()) if draft_head else ""
    return PinnedCluster(str(base_dir), str(draft_dir), len(ranges) or stages, cores, dtype, settings, head, ranges,
                         draft_vocab, row_invariant)


def _start_pinned(pinned: PinnedCluster, in_flight: int = 0) -> tuple[ClusterSpec, Path]:
    """Start the run's own cluster in a temporary run folder, admitting at least ``in_flight`` requests at once;
    returns its spec and that folder."""
    import tempfile

    from common.speculation.draft_vocab import draft_vocabulary

    # --concurrency K measures K in the ring, none queued
    admission = Admission(max_in_flight=max(in_flight, Admission().max_in_flight))
    asked = ClusterRequest(base=pinned.base, draft=pinned.draft, draft_head=pinned.draft_head,
                           draft_vocab=pinned.draft_vocab, dtype=pinned.dtype, threads=pinned.cores_per_service,
                           row_invariant=pinned.row_invariant, draft_settings=pinned.draft_settings,
                           admission=admission, pinning=pinning_for(pinned.cores_per_service))
    try:
        spec = local_spec(asked, pinned.stages, list(pinned.layer_ranges) or None)
        if pinned.draft_vocab:  # counted once here (and saved), so the drafter starts without counting
            draft_vocabulary(Path(pinned.draft), pinned.draft_vocab)
        run_dir = Path(tempfile.mkdtemp(prefix="flowring-bench-")) / "run"
        typer.echo(f"starting {pinned.stages} stage(s), every service on {pinned.cores_per_service} core(s) of its "
                   f"own: {', '.join(f'{p.name} {p.cpus}' for p in spec.ring)}")
        start(spec, run_dir)
    except (PinError, LaunchError, ValueError, OSError) as exc:
        fail(str(exc))
    return spec, run_dir


@contextlib.contextmanager
def _baseline(spec: ClusterSpec, modes: tuple[str, ...]) -> Iterator[BaselineWorker | None]:
    """The ``local`` worker on stage 1's cores (pinned when the cluster is), if that mode runs."""
    if LOCAL not in modes:
        yield None
        return
    with BaselineWorker(Path(spec.base), spec.dtype, spec.threads, stage_cpus(spec), spec.device) as worker:
        yield worker


@dataclasses.dataclass
class _Runner:
    """One generation of one prompt in one mode: through the ring, or by the local baseline."""

    client: Client
    local: BaselineWorker | None
    settings: BenchSettings

    def run(self, prompt: Prompt, mode: str, options: dict[str, Any]) -> RunRecord:
        if mode == LOCAL:
            return self._local(prompt, options)
        try:
            reply = self.client.generate(prompt.text, raw=prompt.raw, mode=mode, **options)
        except (ClusterUnavailable, ProtocolError) as exc:
            return RunRecord(prompt.id, mode, False, error=str(exc), category=prompt.category)
        if not reply.ok:
            return RunRecord(prompt.id, mode, False, error=reply.error or "no error given", category=prompt.category)
        return RunRecord(prompt.id, mode, True, dict(reply.stats), category=prompt.category,
                         token_ids=tuple(reply.token_ids))

    def _local(self, prompt: Prompt, options: dict[str, Any]) -> RunRecord:
        assert self.local is not None
        answer = self.local.generate({"prompt": prompt.text, "raw": prompt.raw, **{
            k: options[k] for k in ("max_new_tokens", "temperature", "seed")}})
        if "error" in answer:
            return RunRecord(prompt.id, LOCAL, False, error=answer["error"], category=prompt.category)
        new = len(answer["token_ids"])
        stats = {"new_tokens": new, "steps": max(new - 1, 0), "noop_steps": 0, "rounds": 0, "tokens_per_step": 1.0,
                 "accepted_per_step": 0.0, "prefill_ms": answer["prefill_ms"], "decode_ms": answer["decode_ms"],
                 "wall_ms": answer["wall_ms"], "drafter_busy_ms": 0.0, "services": {},
                 "prompt_tokens": answer["prompt_tokens"]}
        return RunRecord(prompt.id, LOCAL, True, stats, category=prompt.category, token_ids=tuple(answer["token_ids"]))


def _warm_up(runner: _Runner, settings: BenchSettings, prompt: Prompt, console: Console) -> None:
    options = {**settings.options(min(settings.max_new_tokens, WARMUP_MAX_NEW_TOKENS)), "trace": False}
    for mode in settings.modes:
        for _ in range(settings.warmup):
            record = runner.run(prompt, mode, options)
            if not record.ok:
                console.print(f"[yellow]warm-up failed[/]: mode {mode}, prompt {escape(prompt.id)}: "
                              f"{escape(record.error)}")


def _run_all(runner: _Runner, settings: BenchSettings, prompts: list[Prompt], console: Console) -> list[RunRecord]:
    records: list[RunRecord] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(prompts) * len(settings.modes))
        for i, prompt in enumerate(prompts, start=1):
            for mode in settings.modes:
                progress.update(task, description=f"prompt {i}/{len(prompts)} ({prompt.id}) {mode:<8}")
                record = runner.run(prompt, mode, settings.options())
                if not record.ok:
                    progress.console.print(f"[red]failed[/]: mode {mode}, prompt {escape(prompt.id)}: "
                                           f"{escape(record.error)}")
                records.append(record)
                progress.advance(task)
    return records


def default_json(run_dir: Path, started: datetime) -> Path:
    """Where a run given no ``--json`` saves its report: the cluster's run folder, one file per run."""
    return run_dir / "bench" / f"bench-{started:%Y%m%d-%H%M%S}.json"
