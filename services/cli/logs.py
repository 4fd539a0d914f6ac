"""``flowring logs``: every service's log lines merged by time; readable on a terminal, JSON when piped.

A local cluster's logs are read from run_dir/logs; a cluster of boards (run_dir/boards.json) has each
service's log read, or followed, on its board over SSH.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from common.observability.logview import LEVELS, Follower, LogFilter, LogLine, Reorder, merged, render
from services.run_folder import RunFolder, default_run_dir

app = typer.Typer(add_completion=False)
DEFAULT_RUN_DIR = default_run_dir()
RunDir = Annotated[Path, typer.Option("--run-dir", envvar="FLOWRING_RUN_DIR", help="Where the cluster keeps state.")]
FOLLOW_POLL_S = 0.5
FOLLOW_HOLD_S = 1.0  # lines from boards wait this long for slower ones to be printed in time order


@app.command()
def logs(
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines until Ctrl-C.")] = False,
    service: Annotated[str, typer.Option(help="Only this service (e.g. stage-1).")] = "",
    request: Annotated[str, typer.Option(help="Only lines of this request id.")] = "",
    level: Annotated[str, typer.Option(help=f"Only this level and above: {', '.join(LEVELS)}.")] = "",
    pretty: Annotated[bool, typer.Option("--pretty", help="Readable lines even when piped.")] = False,
    run_dir: RunDir = DEFAULT_RUN_DIR,
) -> None:
    """Print the merged logs of every service: run_dir/logs/*.log, or each board's over SSH."""
    if level and level not in LEVELS:
        typer.secho(f"error: --level must be one of {', '.join(LEVELS)}, not {level}", err=True)
        raise typer.Exit(1)
    keep = LogFilter(service, request, level)
    readable = pretty or sys.stdout.isatty()
    if RunFolder(run_dir).boards.exists():
        _board_logs(run_dir, keep, readable, follow)
        return
    log_dir = RunFolder(run_dir).logs
    if not log_dir.is_dir():
        typer.secho(f"no logs: {log_dir} does not exist (start a cluster with `flowring up`)", err=True)
        raise typer.Exit(1)
    follower = Follower(log_dir) if follow else None  # starts at today's ends, so nothing is printed twice
    _print((line for line in merged(log_dir) if keep(line)), readable)
    while follower is not None:
        try:
            time.sleep(FOLLOW_POLL_S)
        except KeyboardInterrupt:
            return
        _print((line for line in follower.poll() if keep(line)), readable)


def _board_logs(run_dir: Path, keep: LogFilter, readable: bool, follow: bool) -> None:
    """Every board's logs over SSH; a log that cannot be read is one line on stderr (exit status 1)."""
    from services.cluster import remote_logs
    from services.cluster.ssh import Ssh

    options, service_logs = remote_logs.recorded_logs(run_dir)
    ssh = Ssh(options)
    wanted = [log for log in service_logs if not keep.service or log.service == keep.service]
    copies = remote_logs.fetch(ssh, wanted)
    problems = [copy.problem for copy in copies if copy.problem]
    for problem in problems:
        typer.secho(f"error: {problem}", err=True)
    _print((line for line in remote_logs.merged(copies) if keep(line)), readable)
    if not follow:
        if problems:
            raise typer.Exit(1)
        return
    reorder = Reorder(FOLLOW_HOLD_S)
    with remote_logs.Tails(ssh, [copy for copy in copies if not copy.problem]) as tails:
        try:
            while tails.following:
                lines, ended = tails.poll(FOLLOW_POLL_S)
                for problem in ended:
                    typer.secho(f"error: {problem}", err=True)
                reorder.add((line for line in lines if keep(line)), time.monotonic())
                _print(reorder.release(time.monotonic()), readable)
        except KeyboardInterrupt:  # the user's way to stop following; leaving the block ends every tail
            _print(reorder.flush(), readable)
            return
    _print(reorder.flush(), readable)
    raise typer.Exit(1)  # every tail ended: the boards can no longer be followed


def _print(lines: Iterable[LogLine], readable: bool) -> None:
    for line in lines:
        typer.echo(render(line) if readable else line.raw)
