"""The ``flowring`` command: start and stop a cluster (local or on boards), generate, inspect, manage models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from common.cluster.settings import ClusterSpec
from common.wire.client import GenerateReply
from services.cli import (
    agent,
    bench,
    cluster,
    heads,
    init,
    keys,
    logs,
    models,
    plan,
    profile,
    project,
    scan,
    serve,
    status,
    version,
)
from services.cli.cluster import DEFAULT_RUN_DIR, RunDir
from services.cli.errors import fail
from services.client import Client, ClusterUnavailable, fresh_seed
from services.launcher import client_for
from services.run_folder import RunFolder

app = typer.Typer(help="flowring: continuous pipelined speculative decoding over a ring of services.",
                  no_args_is_help=True, add_completion=True)
app.add_typer(models.app, name="models", help="Pull and list models in the local cache.")
app.add_typer(heads.app, name="heads", help="Train draft heads and list the heads in the local cache.")
app.add_typer(bench.app, name="bench", help="Run decoding modes side by side on the running cluster.")
app.add_typer(plan.app)
app.add_typer(project.app)
app.add_typer(profile.app, name="profile", help="Measure forward costs on this machine.")
app.add_typer(serve.app)
app.command()(cluster.up)
app.command()(cluster.down)
app.add_typer(keys.app, name="keys", help="Create the CURVE key pairs of a LAN cluster.")
app.add_typer(status.app)
app.add_typer(logs.app)
app.add_typer(version.app)
app.add_typer(agent.app)  # LAN discovery: a board announces itself, the head scans and writes an inventory
app.add_typer(scan.app)
app.add_typer(init.app)

REACH_TIMEOUT_S = 3.0  # a command that cannot reach the scheduler says so within this long


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt text.")],
    # Checked by the scheduler before any work starts (services/scheduler/admission.py), in one line.
    max_new_tokens: Annotated[int, typer.Option()] = 64,
    temperature: Annotated[float, typer.Option()] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Repeat a sample with the same seed (default: a fresh one "
                                                  "per request).", show_default=False)] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Tokenize the prompt as is (no chat template).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print text, token ids and stats as JSON.")] = False,
    stream: Annotated[bool, typer.Option("--stream", help="Print text as tokens are accepted.")] = False,
    mode: Annotated[str, typer.Option(help="ar, chunk, pipedec or flowspec (default: the cluster's).")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 600.0,
    run_dir: RunDir = DEFAULT_RUN_DIR,
) -> None:
    """Generate a completion on the running cluster (Ctrl-C cancels it there too); the speed follows on stderr."""
    spec = _cluster(run_dir)
    seed = fresh_seed() if seed is None else seed
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "raw": raw, "mode": mode}
    try:
        with client_for(spec, timeout) as client:
            client.status(timeout_s=REACH_TIMEOUT_S)  # an unreachable cluster fails now, not after `timeout`
            reply = _stream(client, prompt, options) if stream else client.generate(prompt, **options)
    except ClusterUnavailable as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # the client has already cancelled the request on the cluster
        typer.echo("\ncancelled", err=True)
        raise typer.Exit(130) from None
    if not reply.ok:
        fail(reply.error)
    if as_json:
        typer.echo(json.dumps({"text": reply.text, "token_ids": list(reply.token_ids), "stats": reply.stats}))
    elif stream:
        stats = reply.stats
        typer.echo(f"\n[{stats.get('new_tokens', 0)} tokens, {stats.get('decode_tokens_per_s', 0.0):.1f} tokens/s "
                   f"decoding, {stats.get('wall_ms', 0.0) / 1e3:.2f} s in all]", err=True)
    else:
        typer.echo(reply.text)
        stats = reply.stats
        typer.echo(f"{stats['new_tokens']} tokens in {stats['wall_ms'] / 1e3:.2f} s: {stats['tokens_per_s']:.1f} "
                   f"tokens/s ({stats['decode_tokens_per_s']:.1f} after the prompt)", err=True)


def _stream(client: Client, prompt: str, options: dict) -> GenerateReply:
    """Print each chunk's text as it arrives; return the final reply."""
    for msg in client.stream(prompt, **options):
        if isinstance(msg, GenerateReply):
            return msg
        typer.echo(msg.text, nl=False)
    raise AssertionError("a stream always ends with a reply")


def _cluster(run_dir: Path) -> ClusterSpec:
    path = RunFolder(run_dir).cluster
    if not path.exists():
        fail(f"no cluster in {run_dir}: start one with `flowring up`")
    return ClusterSpec.load(path)


if __name__ == "__main__":
    app()
