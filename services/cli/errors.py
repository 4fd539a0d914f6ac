"""How every ``flowring`` command reports a failure: ``error: ...`` on stderr, one line per problem, exit 1."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    for line in message.splitlines() or [""]:
        typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)
