"""``flowring version``: what this installation is and speaks."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated

import typer

from common.wire.codec import PROTOCOL_VERSION

app = typer.Typer(add_completion=False)


@app.command()
def version(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Print the flowring, wire protocol, Python and torch versions."""
    import torch

    try:
        flowring = package_version("flowring")
    except PackageNotFoundError:  # running from a checkout that was never installed
        flowring = "unknown"
    info = {"flowring": flowring, "protocol": PROTOCOL_VERSION, "python": platform.python_version(),
            "torch": torch.__version__}
    if as_json:
        typer.echo(json.dumps(info))
    else:
        typer.echo(" ".join(f"{k} {v}" for k, v in info.items()))
