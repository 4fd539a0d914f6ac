"""``flowring project``: predict decode tokens/s per mode on N boards from one measured ``bench --json`` run.

The model and its assumptions: :mod:`common.projection.ring`, :mod:`common.projection.fit`,
:mod:`common.projection.modes`. ``--measured`` adds other runs (of other N, same prompts and settings)
so that each prediction stands beside the figure measured at that N; only when the boards are the run's
own (speed 1, the run's link). ``local``'s error is then the two runs' difference in the same
measurement: a floor for every other error. ``--validate`` predicts each given run from each comparable
one (itself included) and prints the errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from common.projection.fit import DRAFTER_LOOPS, RunFit, fit_run, with_drafter_loop
from common.projection.modes import project
from common.projection.ring import LOCAL, PROJECTED_MODES, Boards, ProjectionError, relative_error
from common.wire.link import LinkError, LinkSettings
from services.cli.errors import fail

app = typer.Typer(add_completion=False, help="Predict decode tokens/s on N boards from a measured bench run.")
SAME_RUN_KEYS = ("base", "draft", "draft_head", "dtype", "draft_settings")  # cluster settings two runs must share to be compared


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:  # one line, not a traceback
        fail(f"cannot read the run {path}: {exc}")


def _fit(path: Path, run: Mapping[str, Any]) -> RunFit:
    try:
        return fit_run(run)
    except (ProjectionError, KeyError, IndexError) as exc:
        fail(f"cannot project {path}: " + (f"missing {exc}" if isinstance(exc, KeyError) else str(exc)))


def _stage_counts(text: str) -> list[int]:
    try:
        counts = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"--stages takes stage counts separated by commas, not {text!r}")
    if not counts or min(counts) < 1:
        fail(f"--stages needs stage counts >= 1, not {text!r}")
    return counts


def _hidden_size(run: Mapping[str, Any], given: int, link: LinkSettings) -> int:
    """The base model's hidden size: given, or read from the run's base model folder when the link needs it."""
    if given or link.mbps <= 0:
        return given
    config = Path(str(run["cluster"].get("base", ""))) / "config.json"
    try:
        return int(json.loads(config.read_text())["hidden_size"])
    except (OSError, ValueError, KeyError) as exc:  # the run may come from another machine
        fail(f"a link bandwidth needs the model's hidden size: pass --hidden-size ({config}: {exc})")


def _run_link(run: Mapping[str, Any]) -> LinkSettings:
    settings = run.get("settings", {})
    return LinkSettings(float(settings.get("link_mbps", 0.0)), float(settings.get("link_latency_ms", 0.0)))


def _measured_by_stages(paths: list[Path], run: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """Decode tokens/s per mode of each run (the source run's included), by its stage count."""
    out = {}
    for r in [run, *(_load(p) for p in paths)]:
        out[len(r["cluster"]["stages"])] = {s["mode"]: float(s["decode_tokens_per_s"]) for s in r.get("summary", [])}
    return out


def _error(predicted: float, measured: float | None) -> str:
    if measured is None:
        return "-"
    error = relative_error(predicted, measured)
    return f"{error if abs(error) >= 5e-4 else 0.0:+.1%}"  # no "-0.0%"


def _table(rows: list[tuple[str, int, float, float | None]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("mode", "stages", "predicted tok/s", "measured tok/s", "error"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for mode, stages, predicted, measured in rows:
        shown = "-" if measured is None else f"{measured:.2f}"
        table.add_row(mode, str(stages), f"{predicted:.2f}", shown, _error(predicted, measured))
    return table


def _describe(fit: RunFit) -> str:
    hops = fit.costs.hops
    lines = [f"  {mode}: a stage layer {c.layer.per_forward_ms:.2f} ms a forward + {c.layer.per_row_ms:.3f} ms a row; "
             f"the verifier {c.head.per_forward_ms:.1f} ms + {c.head.per_row_ms:.2f} ms a row"
             for mode, c in fit.costs.forwards.items()]
    lines.append(f"  hops: forward -> next forward {hops.forward_ms:.2f} ms, draft -> stage 1 {hops.segment_ms:.2f} ms, "
                 f"verifier -> decision {hops.verdict_ms:.2f} ms, decision -> draft {hops.expand_ms:.2f} ms")
    return "\n".join(["measured costs:", *lines])


@app.command("project")
def project_command(
    runs: Annotated[list[Path] | None, typer.Argument(help="With --validate: the runs to predict from each other.",
                                                      show_default=False)] = None,
    source: Annotated[Path | None, typer.Option("--from", help="A `flowring bench --json --trace` run.")] = None,
    stages: Annotated[str, typer.Option(help="Stage counts to project onto, e.g. 2,4,8.")] = "2,4,8",
    speed: Annotated[float, typer.Option(min=0.001, help="Board speed relative to the run's services.")] = 1.0,
    link_mbps: Annotated[float, typer.Option(min=0.0, help="Link bandwidth per hop, megabits/s (0: unlimited).")] = 0.0,
    link_latency_ms: Annotated[float, typer.Option(min=0.0, help="One-way latency per hop, ms.")] = 0.0,
    hidden_size: Annotated[int, typer.Option(min=0, help="Base hidden size (default: the run's base config).")] = 0,
    measured: Annotated[list[Path] | None, typer.Option(help="Other runs to compare with, at their own N.")] = None,
    acceptance_from: Annotated[Path | None, typer.Option(
        help="Replay this run's requests (steps, rounds, drafting, rows) with --from's costs.")] = None,
    validate: Annotated[bool, typer.Option(
        "--validate", help="Predict each of RUNS from each comparable one (itself included), beside the measured.")] = False,
    drafter_loop: Annotated[str, typer.Option(
        help="flowspec's drafter between draft levels: 'measured' (as the run did), 'drain' (every arrived "
             "message, as now) or 'one' (one per level, the older drafter loop).")] = "measured",
) -> None:
    """Print predicted decode tokens/s per mode for each stage count, beside the measured figure where there is one."""
    if validate:
        _validate(runs or [])
        return
    if source is None or runs:
        fail("give --from RUN.json (or --validate RUN.json RUN.json ...)")
    if drafter_loop not in DRAFTER_LOOPS:
        fail(f"--drafter-loop must be one of {', '.join(DRAFTER_LOOPS)}, not {drafter_loop!r}")
    run = _load(source)
    fit = with_drafter_loop(_fit(source, run), drafter_loop)
    behaviour = _fit(acceptance_from, _load(acceptance_from)) if acceptance_from is not None else None
    behaviour = with_drafter_loop(behaviour, drafter_loop) if behaviour is not None else None
    try:
        link = LinkSettings(link_mbps, link_latency_ms)
        hidden = _hidden_size(run, hidden_size, link)
        predictions = {n: project(fit, Boards(n, speed, link, hidden), behaviour) for n in _stage_counts(stages)}
    except (ProjectionError, LinkError) as exc:
        fail(f"cannot project {source}: {exc}")
    console = Console(width=160)
    shaped = f"boards at speed {speed:g}, link {link_mbps:g} Mbps {link_latency_ms:g} ms"
    also = f"; acceptance from {acceptance_from.name}" if acceptance_from else ""
    also += "" if drafter_loop == "measured" else f"; drafter loop: {drafter_loop}"
    console.print(f"from {source.name} ({fit.stages} stages): {shaped}{also}", highlight=False)
    console.print(_describe(fit), highlight=False)
    same_boards = speed == 1.0 and link == _run_link(run)  # else no measurement is of these boards
    actual = _measured_by_stages(measured or [], run) if same_boards else {}
    console.print(_table(_rows(predictions, fit.measured, actual, speed)))


def _rows(predictions: Mapping[int, Mapping[str, float]], own: Mapping[str, float],
          actual: Mapping[int, Mapping[str, float]], speed: float) -> list[tuple[str, int, float, float | None]]:
    """(mode, stages, predicted, measured or None); local is the run's own figure at the boards' speed."""
    rows = []
    for n, rates in predictions.items():
        if LOCAL in own:  # one board, no ring
            rows.append((LOCAL, n, own[LOCAL] * speed, actual.get(n, {}).get(LOCAL)))
        rows.extend((mode, n, rate, actual.get(n, {}).get(mode)) for mode, rate in rates.items())
    return rows


# --------------------------------------------------------------------------------------------- validate
def _comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same models and drafter, same prompts and token budget: only their stage counts may differ."""
    same_cluster = all(a["cluster"].get(k) == b["cluster"].get(k) for k in SAME_RUN_KEYS)
    keys = ("prompts", "num_prompts", "max_new_tokens", "temperature")
    return same_cluster and all(a.get("settings", {}).get(k) == b.get("settings", {}).get(k) for k in keys)


def _validate(paths: list[Path]) -> None:
    """For every comparable (source, target) pair: each mode predicted from the source at the target's N,
    beside the target's measurement; and with the target's own behaviour (the cost model's error alone)."""
    if not paths:
        fail("--validate needs the runs to compare: flowring project --validate RUN.json RUN.json ...")
    loaded = [(p, _load(p)) for p in paths]
    fits = {p: _fit(p, run) for p, run in loaded}
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("from", "to", "mode", "predicted", "measured", "error", "with target's behaviour", "error "):
        table.add_column(name, justify="left" if name in ("from", "to", "mode") else "right")
    for src, src_run in loaded:
        for dst, dst_run in loaded:
            if not _comparable(src_run, dst_run):
                continue
            source, target = fits[src], fits[dst]
            try:
                boards = Boards(target.stages, link=_run_link(dst_run))
                predicted, replayed = project(source, boards), project(source, boards, target)
            except ProjectionError as exc:
                fail(f"cannot project {src} onto {dst}: {exc}")
            for mode in (m for m in PROJECTED_MODES if m in predicted and m in target.measured):
                actual = target.measured[mode]
                table.add_row(f"{src.name} (N={source.stages})", f"{dst.name} (N={target.stages})", mode,
                              f"{predicted[mode]:.2f}", f"{actual:.2f}", _error(predicted[mode], actual),
                              f"{replayed[mode]:.2f}", _error(replayed[mode], actual))
    console = Console(width=160)
    console.print(table)
    console.print("What the projection holds at the source run's values, as each run measured it (means per request):")
    console.print(_behaviour_table(fits))


def _behaviour_table(fits: Mapping[Path, RunFit]) -> Table:
    """Per run and mode: verdicts (steps + noops), rounds, tokens per step, the drafter's ms per Expand."""
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("run", "mode", "steps", "noops", "rounds", "decode tokens/step", "draft ms/Expand"):
        table.add_column(name, justify="left" if name in ("run", "mode") else "right")
    for path, fit in fits.items():
        for mode in PROJECTED_MODES:
            reqs = [r for r in fit.requests if r.mode == mode]
            if not reqs:
                continue
            n = len(reqs)
            expands = sum(len(r.expansions) for r in reqs)
            table.add_row(f"{path.name} (N={fit.stages})", mode, f"{sum(r.steps for r in reqs) / n:.1f}",
                          f"{sum(r.noops for r in reqs) / n:.1f}", f"{sum(r.rounds for r in reqs) / n:.1f}",
                          f"{sum(r.new_tokens - 1 for r in reqs) / sum(r.steps for r in reqs):.2f}",
                          f"{sum(r.draft_ms for r in reqs) / max(expands, 1):.0f}")
    return table
