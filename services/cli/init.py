"""``flowring init``: scan the LAN and write an inventory for ``flowring up --cluster`` (``make up CLUSTER=``).

Placement follows ``services.discovery.drafting.place``; the layer split is the planner's, from the boards'
measured speeds and memory (as ``layers = "auto"`` would compute at ``up``), written as explicit ranges.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from services.cli.errors import fail
from services.cli.scan import Group, Interfaces, Timeout

app = typer.Typer(add_completion=False)


@app.command()
def init(
    out: Annotated[Path, typer.Option(help="The inventory file to write.")] = Path("cluster.toml"),
    model: Annotated[str, typer.Option(help="A catalog pair (qwen-coder, smollm2) instead of --base/--draft.")] = "",
    base: Annotated[str, typer.Option(help="Base model: catalog name or folder on this machine (the head).")] = "",
    draft: Annotated[str, typer.Option(help="Draft model: catalog name or folder on this machine.")] = "",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "bfloat16",
    stages: Annotated[int, typer.Option(min=0, help="Stage boards (0: every board but the control board).")] = 0,
    control: Annotated[str, typer.Option(help="Board for the scheduler and drafter (default: the one with the most "
                                              "memory).")] = "",
    kv_tokens: Annotated[int, typer.Option(min=1, help="KV-cache rows every slice must have room for.")] = 2048,
    overhead_mib: Annotated[float, typer.Option(min=0, help="Fixed memory per service process.")] = 300.0,
    threads: Annotated[int, typer.Option(min=0, help="Torch threads per service (0: torch's default).")] = 0,
    identity: Annotated[str, typer.Option(help="SSH private key for the boards (default: ssh's own).")] = "",
    known_hosts: Annotated[str, typer.Option(help="known_hosts file (default: ssh's own).")] = "",
    timeout: Timeout = 3.0,
    group: Group = "default",
    interface: Interfaces = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Find the boards, place the services, split the layers by measured speed and memory, write OUT."""
    from common.cluster.inventory import InventoryError, parse_inventory
    from common.cluster.layout import board_bytes, layer_ranges, memory_problems, service_bytes
    from common.cluster.partition import PartitionError, format_ranges, human_bytes, layer_costs
    from common.models.catalog import ModelStoreError, default_pair
    from common.models.modeling import ModelingError, check_same_tokenizer
    from common.models.store import resolve
    from services.discovery.drafting import InitOptions, draft_inventory, inventory_toml
    from services.discovery.mdns import scan

    if out.exists() and not force:
        fail(f"{out} exists: give --force to overwrite it")
    if dtype not in ("float32", "bfloat16"):
        fail(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    if model:
        if base or draft:
            fail("give --model NAME or --base with --draft, not both")
        try:
            base, draft = default_pair(model)
        except ModelStoreError as exc:
            fail(str(exc))
    if not base or not draft:
        fail("give --model NAME, or --base with --draft")
    found = scan(timeout, group=group, interfaces=interface or ())
    for line in found.skipped:
        typer.secho(f"skipped: {line}", err=True)
    typer.echo(f"found {len(found.boards)} board(s) of group {group!r}: "
               f"{', '.join(f'{b.name} ({b.address})' for b in found.boards) or 'none'}")
    options = InitOptions(base=base, draft=draft, dtype=dtype, stages=stages, control=control, threads=threads,
                          kv_tokens=kv_tokens, overhead_mib=overhead_mib, identity=identity, known_hosts=known_hosts)
    try:
        inv = draft_inventory(found.boards, options)
        base_dir, draft_dir = resolve(base), resolve(draft)
        check_same_tokenizer(base_dir, draft_dir)
        dtype_bytes = 4 if dtype == "float32" else 2
        base_costs, draft_costs = layer_costs(base_dir, dtype_bytes), layer_costs(draft_dir, dtype_bytes)
        ranges = layer_ranges(inv, base_costs, draft_costs)
        needs = board_bytes(inv, service_bytes(inv, ranges, base_costs, draft_costs))
        problems = memory_problems(inv, needs)
        if problems:
            raise PartitionError("\n".join(problems))
        inv = dataclasses.replace(inv, layers=format_ranges(ranges))
        text = inventory_toml(inv, _notes(found.boards, base, draft))
        parse_inventory(tomllib.loads(text))  # what `up` will read: valid, or a bug here
    except (InventoryError, PartitionError, ModelStoreError, ModelingError, OSError) as exc:
        fail(str(exc))
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {exc}")
    _show(inv, ranges, needs, human_bytes)
    typer.echo(f"wrote {out}: start the ring with `flowring keys create --cluster {out}` and "
               f"`flowring up --cluster {out}` (or `make up CLUSTER={out}`)")


def _notes(boards, base: str, draft: str) -> list[str]:
    probes = " / ".join(sorted({b.probe for b in boards}))
    return [f"Written by `flowring init` from {len(boards)} board(s) found on the LAN; models {base} + {draft}.",
            "Placement: the board with the most memory runs the scheduler and the drafter, every other board a",
            "stage; the verifier joins the last stage. Layers: the planner's split by each board's memory (less",
            f"its other services) and speed, measured by `flowring agent` ({probes}).",
            "Every field is documented in infra/lan.example.toml."]


def _show(inv, ranges, needs, human_bytes) -> None:
    layers = {name: ranges[i] for i, name in enumerate(inv.stages)}
    runs: dict[str, list[str]] = {b.name: [] for b in inv.boards}
    for service, board in inv.services():
        runs[board].append(service)
    table = Table(box=box.SIMPLE)
    for column in ("board", "address", "cores", "memory MiB", "speed", "services", "layers", "needs"):
        table.add_column(column)
    for b in inv.boards:
        first_last = layers.get(b.name)
        table.add_row(b.name, b.address, str(b.cores), str(b.memory_mib), f"{b.speed:.3g}", " ".join(runs[b.name]),
                      f"{first_last[0]}-{first_last[1]}" if first_last else "-", human_bytes(needs[b.name]))
    Console(width=160).print(table)
