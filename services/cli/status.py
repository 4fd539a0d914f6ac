"""``flowring status``: every service's role, place, health and load, as the scheduler last heard it."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from common.cluster.settings import ClusterSpec
from common.wire.client import StatusReply
from services.client import ClusterUnavailable
from services.launcher import client_for
from services.run_folder import RunFolder, default_run_dir

app = typer.Typer(add_completion=False)
DEFAULT_RUN_DIR = default_run_dir()
RunDir = Annotated[Path, typer.Option("--run-dir", envvar="FLOWRING_RUN_DIR", help="Where the cluster keeps state.")]


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print {\"services\": [...]} as JSON.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")] = 1.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the scheduler.")] = 2.0,
    run_dir: RunDir = DEFAULT_RUN_DIR,
) -> None:
    """Show every service: role, host, pid, endpoints, layers, health, uptime, load, metrics."""
    cluster = RunFolder(run_dir).cluster
    if not cluster.exists():
        typer.secho(f"no cluster: nothing in {run_dir} (start one with `flowring up`)", err=True)
        raise typer.Exit(1)
    spec = ClusterSpec.load(cluster)
    while True:
        try:
            with client_for(spec, timeout) as client:
                reply = client.status(timeout_s=timeout)
        except ClusterUnavailable:
            s = spec.scheduler
            typer.secho(f"no cluster answering: the scheduler at {s.endpoint(s.client_port)} did not reply "
                        f"within {timeout:g} s", err=True)
            if not watch:
                raise typer.Exit(1) from None
        else:
            _show(reply, as_json, clear=watch and not as_json)
        if not watch:
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


def as_dict(reply: StatusReply) -> dict:
    return {"ready": reply.ready, "busy": reply.busy, "services": [dataclasses.asdict(s) for s in reply.services]}


def _show(reply: StatusReply, as_json: bool, clear: bool) -> None:
    if as_json:
        typer.echo(json.dumps(as_dict(reply)))
        return
    if clear:
        typer.clear()
    typer.echo(f"cluster {'ready' if reply.ready else 'not ready'}{', busy' if reply.busy else ''}")
    table = Table(box=box.SIMPLE)
    for column in ("role", "name", "host", "pid", "health", "uptime", "in flight", "KV cache", "last step",
                   "layers", "endpoints", "metrics"):
        table.add_column(column, no_wrap=column != "endpoints")
    for s in reply.services:
        seen = "never heard" if s.last_seen_s < 0 else f"{s.last_seen_s:.1f} s ago"
        table.add_row(
            s.role, s.name, s.host, str(s.pid or "-"), f"{'healthy' if s.healthy else 'UNHEALTHY'} ({seen})",
            f"{s.uptime_s:.0f} s", str(s.in_flight), f"{s.kv_cache_bytes / 2**20:.1f} MiB",
            f"{s.last_step_ms:.1f} ms", "-".join(map(str, s.layers)) or "-", " ".join(s.endpoints), s.metrics or "-",
        )
    Console(width=200).print(table)
