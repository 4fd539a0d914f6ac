"""``flowring scan``: list the boards that announce themselves on the LAN (``flowring agent``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False)
Timeout = Annotated[float, typer.Option(min=0.2, help="Seconds to listen for adverts.")]
Group = Annotated[str, typer.Option(help="List only the boards of this group (`flowring agent --group`).")]
Interfaces = Annotated[list[str] | None, typer.Option("--interface", help="IPv4 address of an interface to scan "
                                                                          "on (repeatable; default: all).")]


@app.command()
def scan(
    timeout: Timeout = 3.0,
    group: Group = "default",
    interface: Interfaces = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {\"boards\": [...]} as JSON.")] = False,
) -> None:
    """Listen for board adverts (mDNS/DNS-SD) and list the boards: address, cores, memory, speed, versions."""
    from services.cluster.board_agent import flowring_version
    from services.discovery.mdns import scan as scan_lan

    found = scan_lan(timeout, group=group, interfaces=interface or ())
    if as_json:
        typer.echo(json.dumps({"boards": [dataclasses.asdict(b) for b in found.boards],
                               "skipped": list(found.skipped)}))
        return
    for line in found.skipped:
        typer.secho(f"skipped: {line}", err=True)
    if not found.boards:
        typer.echo(f"no boards of group {group!r} answered within {timeout:g} s (is `flowring agent` running on "
                   "them, on this LAN?)")
        raise typer.Exit(1)
    table = Table(box=box.SIMPLE)
    for column in ("board", "address", "ssh", "user", "cores", "memory MiB", "speed", "flowring", "torch", "host"):
        table.add_column(column, justify="right" if column in ("cores", "memory MiB", "speed") else "left")
    mine = flowring_version()
    for b in found.boards:
        version = b.flowring if b.flowring == mine else f"{b.flowring} (head: {mine})"
        table.add_row(b.name, b.address, str(b.ssh_port), b.user, str(b.cores), str(b.memory_mib),
                      f"{b.speed:.3g}", version, b.torch, b.host)
    Console(width=160).print(table)
    probes = sorted({b.probe for b in found.boards})
    typer.echo(f"{len(found.boards)} board(s); speed: forwards/s of the probe {' / '.join(probes)}")
