"""``flowring keys``: the CURVE key pairs that encrypt and authenticate a LAN cluster's sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.cluster import KeysDir, keys_folder
from services.cli.errors import fail

app = typer.Typer(no_args_is_help=True)


@app.command()
def create(
    cluster: Annotated[Path, typer.Option("--cluster", help="TOML inventory of boards (infra/lan.example.toml).")],
    keys_dir: KeysDir = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace existing key pairs (boards then need a "
                                                            "new `flowring up`).")] = False,
) -> None:
    """Create a key pair per board of the inventory and one for this head's clients (secret files 0600).

    `flowring up --cluster FILE` then copies each board its own key pair over SSH and gives every service
    the public keys it must admit. Only public keys are printed.
    """
    from common.cluster.inventory import InventoryError, load_inventory
    from common.cluster.keys import create_keys

    try:
        boards = [b.name for b in load_inventory(cluster).boards]
        folder = keys_folder(cluster, keys_dir)
        created = create_keys(folder, boards, replace=replace)
    except (InventoryError, OSError) as exc:
        fail(str(exc))
    for name, pair in created.items():
        typer.echo(f"created {name:<20} public key {pair.public.decode()}")
    kept = len(boards) + 1 - len(created)
    if kept:
        typer.echo(f"kept {kept} existing key pair(s) (--replace makes new ones)")
    typer.echo(f"keys in {folder} (secret files readable by you only)")
