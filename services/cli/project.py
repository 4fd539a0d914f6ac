"""``flowring project``: predict decode tokens/s per mode on N boards from one measured ``bench --json`` run.

The model and its assumptions: :mod:`common.projection`. ``--measured`` adds other runs (of other N,
same prompts and settings) so that each prediction stands beside the figure measured at that N; only
when the boards are the run's own (speed 1, the run's link). ``local``'s error is then the two runs'
difference in the same measurement: a floor for every other error.
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

from common.link import LinkError, LinkSettings
from common.projection import (
    LOCAL,
    Boards,
    ProjectionError,
    fit_run,
    measured_rates,
    project,
    relative_error,
    with_acceptance,
)
from services.cli.errors import fail

app = typer.Typer(add_completion=False, help="Predict decode tokens/s on N boards from a measured bench run.")


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:  # one line, not a traceback
        fail(f"cannot read the run {path}: {exc}")


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
        out[len(r["cluster"]["stages"])] = measured_rates(r)
    return out


def _table(rows: list[tuple[str, int, float, float | None]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("mode", "stages", "predicted tok/s", "measured tok/s", "error"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for mode, stages, predicted, measured in rows:
        shown = "-" if measured is None else f"{measured:.2f}"
        error = "-" if measured is None else f"{relative_error(predicted, measured):+.1%}"
        table.add_row(mode, str(stages), f"{predicted:.2f}", shown, error)
    return table


@app.command("project")
def project_command(
    source: Annotated[Path, typer.Option("--from", help="A `flowring bench --json` run (with --trace).")],
    stages: Annotated[str, typer.Option(help="Stage counts to project onto, e.g. 2,4,8.")] = "2,4,8",
    speed: Annotated[float, typer.Option(min=0.001, help="Board speed relative to the run's services.")] = 1.0,
    link_mbps: Annotated[float, typer.Option(min=0.0, help="Link bandwidth per hop, megabits/s (0: unlimited).")] = 0.0,
    link_latency_ms: Annotated[float, typer.Option(min=0.0, help="One-way latency per hop, ms.")] = 0.0,
    hidden_size: Annotated[int, typer.Option(min=0, help="Base hidden size (default: the run's base config).")] = 0,
    measured: Annotated[list[Path] | None, typer.Option(help="Other runs to compare with, at their own N.")] = None,
    acceptance_from: Annotated[Path | None, typer.Option(
        help="Take steps, rounds, draft time and work per step from this run (e.g. one at the target N).")] = None,
) -> None:
    """Print predicted decode tokens/s per mode for each stage count, beside the measured figure where there is one."""
    run = _load(source)
    try:
        link = LinkSettings(link_mbps, link_latency_ms)
        fit = fit_run(run)
        if acceptance_from is not None:
            fit = with_acceptance(fit, fit_run(_load(acceptance_from)))
        hidden = _hidden_size(run, hidden_size, link)
        predictions = {n: project(fit, Boards(n, speed, link, hidden)) for n in _stage_counts(stages)}
    except (ProjectionError, LinkError, KeyError) as exc:
        fail(f"cannot project {source}: missing {exc}" if isinstance(exc, KeyError) else str(exc))
    console = Console(width=160)
    shaped = f"boards at speed {speed:g}, link {link_mbps:g} Mbps {link_latency_ms:g} ms"
    also = f"; acceptance from {acceptance_from.name}" if acceptance_from else ""
    console.print(f"from {source.name} ({len(run['cluster']['stages'])} stages): {shaped}{also}", highlight=False)
    console.print(f"fitted: a layer {fit.stage_layer.per_forward_ms:.2f} ms a forward + {fit.stage_layer.per_row_ms:.3f}"
                  f" ms a row; the head {fit.head.per_forward_ms:.1f} ms + {fit.head.per_row_ms:.2f} ms a row; "
                  f"a hop {fit.hop_ms:.2f} ms", highlight=False)
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
