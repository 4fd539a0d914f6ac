"""``flowring serve``: the OpenAI-compatible HTTP API in front of the running cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.cluster.settings import ClusterSpec
from common.speculation.modes import MODES
from services.run_folder import RunFolder, default_run_dir

app = typer.Typer()
DEFAULT_RUN_DIR = default_run_dir()
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # addresses that need no API key: nothing beyond this machine


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the API to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    model_name: Annotated[str, typer.Option(help="The model id the API lists (default: the base model's folder).")] = "",
    mode: Annotated[str, typer.Option(help="Decoding mode of every request (default: the cluster's).")] = "",
    default_max_tokens: Annotated[int, typer.Option(min=1, help="For chat requests that set no limit.")] = 256,
    api_key: Annotated[str, typer.Option(envvar="FLOWRING_API_KEY", show_default=False,
                                         help="Require 'Authorization: Bearer KEY' (needed beyond loopback).")] = "",
    run_dir: Annotated[Path, typer.Option("--run-dir", envvar="FLOWRING_RUN_DIR")] = DEFAULT_RUN_DIR,
) -> None:
    """Serve /v1/models, /v1/completions and /v1/chat/completions (streamed or not) until Ctrl-C."""
    if not api_key and host not in LOOPBACK:
        typer.secho(f"error: --host {host} exposes the API beyond this machine: give --api-key (or set "
                    "FLOWRING_API_KEY)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    path = RunFolder(run_dir).cluster
    if not path.exists():
        typer.secho(f"error: no cluster in {run_dir}: start one with `flowring up`", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    if mode and mode not in MODES:
        typer.secho(f"error: mode {mode!r} is not one of {', '.join(MODES)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    import uvicorn

    from common.cluster.keys import client_curve, own_keys
    from services.api.app import ApiSettings, create_app

    spec = ClusterSpec.load(path)
    settings = ApiSettings(
        scheduler_endpoint=spec.scheduler.endpoint(spec.scheduler.client_port), model_dir=spec.base,
        model_name=model_name or Path(spec.base).name, mode=mode, default_max_tokens=default_max_tokens,
        timeout_s=spec.timeouts.request_timeout_s, api_key=api_key,
        scheduler_curve=client_curve(own_keys(spec), spec.scheduler), max_message_bytes=spec.max_message_bytes,
    )
    typer.echo(f"OpenAI-compatible API at http://{host}:{port}/v1 (model {settings.model_name}"
               f"{', API key required' if api_key else ''})")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
