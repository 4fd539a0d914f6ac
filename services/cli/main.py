"""The ``flowring`` command: start and stop a local cluster, generate, inspect, manage models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from common.protocol import DraftSettings, GenerateReply
from common.settings import ClusterSpec
from services.cli import bench, heads, models, plan, profile, serve
from services.client import Client, ClusterUnavailable
from services.launcher import LaunchError, client_for, default_run_dir, plan_local, start, stop

app = typer.Typer(help="flowring: continuous pipelined speculative decoding over a ring of services.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(models.app, name="models", help="Pull and list models in the local cache.")
app.add_typer(heads.app, name="heads", help="Train draft heads and list the heads in the local cache.")
app.add_typer(bench.app, name="bench", help="Run decoding modes side by side on the running cluster.")
app.add_typer(plan.app)
app.add_typer(profile.app, name="profile", help="Measure forward costs on this machine.")
app.add_typer(serve.app)

RunDir = Annotated[Path, typer.Option("--run-dir", envvar="FLOWRING_RUN_DIR", help="Where the cluster keeps state.")]
_DEFAULTS = DraftSettings()
DEFAULT_RUN_DIR = default_run_dir()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def up(
    base: Annotated[str, typer.Option(help="Base model: catalog name, Hugging Face folder or .gguf file.")] = "",
    draft: Annotated[str, typer.Option(help="Draft model: catalog name, Hugging Face folder or .gguf file.")] = "",
    draft_head: Annotated[str, typer.Option(help="Draft with this head (folder, or name in the heads cache) "
                                                 "instead of a draft model.")] = "",
    model: Annotated[str, typer.Option(help="A catalog pair (qwen-coder, smollm2) instead of --base/--draft.")] = "",
    stages: Annotated[str, typer.Option(help="Pipeline stages the base model is split into, or auto.")] = "2",
    layers: Annotated[str, typer.Option(help="Explicit layer ranges per stage, e.g. 0-10,10-20,20-28.")] = "",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(help="Torch threads per service (0: torch default).")] = 0,
    top_k: Annotated[int, typer.Option(help="Children per drafted node.")] = _DEFAULTS.top_k,
    fill_nodes: Annotated[int, typer.Option(help="Draft nodes in a new round's tree.")] = _DEFAULTS.fill_nodes,
    fill_depth: Annotated[int, typer.Option(help="Levels of a new round's tree.")] = _DEFAULTS.fill_depth,
    expand_nodes: Annotated[int, typer.Option(help="Draft nodes per expansion.")] = _DEFAULTS.expand_nodes,
    expand_depth: Annotated[int, typer.Option(help="Levels per expansion.")] = _DEFAULTS.expand_depth,
    segment_cap: Annotated[int, typer.Option(help="Most nodes per segment.")] = _DEFAULTS.segment_cap,
    expansion: Annotated[str, typer.Option(help="flowspec expansion: grow (one draft forward) or redraft.")] = (
        _DEFAULTS.expansion
    ),
    expand_leaves: Annotated[int, typer.Option(help="Leaves grown per level (grow).")] = _DEFAULTS.expand_leaves,
    grow_levels: Annotated[int, typer.Option(help="Levels grown per step (grow).")] = _DEFAULTS.grow_levels,
    pipedec_width: Annotated[int, typer.Option(help="Nodes per level in pipedec mode.")] = _DEFAULTS.pipedec_width,
    run_dir: RunDir = DEFAULT_RUN_DIR,
    log_level: Annotated[str, typer.Option(help="debug, info or warning.")] = "info",
) -> None:
    """Start a local cluster (every service a background process on loopback); return when ready."""
    if dtype not in ("float32", "bfloat16"):
        _fail(f"--dtype must be float32 or bfloat16, not {dtype}")
    if expansion not in ("grow", "redraft"):
        _fail(f"--expansion must be grow or redraft, not {expansion}")
    if model:
        from common.catalog import default_pair

        try:
            base, draft = default_pair(model)
        except (KeyError, ValueError) as exc:
            _fail(str(exc))
    if not base or not (draft or draft_head):
        _fail("give --model NAME, or --base with --draft or --draft-head")
    stage_count = _stage_count(stages)
    from common.model_store import ModelStoreError, resolve
    from common.modeling import load_model_spec
    from common.modeling.tokenizer import check_same_tokenizer
    from common.partition import explicit_ranges

    try:
        base_dir = resolve(base)
        head_dir = _head_dir(draft_head, base_dir) if draft_head else None
        draft_dir = None if head_dir else resolve(draft)
        if draft_dir:
            check_same_tokenizer(base_dir, draft_dir)
        settings = DraftSettings(top_k=top_k, fill_nodes=fill_nodes, fill_depth=fill_depth,
                                 expand_nodes=expand_nodes, expand_depth=expand_depth, segment_cap=segment_cap,
                                 expansion=expansion, expand_leaves=expand_leaves, pipedec_width=pipedec_width,
                                 grow_levels=grow_levels)
        ranges = explicit_ranges(layers, load_model_spec(base_dir).num_layers) if layers else None
        stage_count = len(ranges) if ranges else stage_count
        spec = plan_local(base_dir, draft_dir, stage_count, dtype=dtype, device=device, threads=threads,
                          draft_settings=settings, layer_ranges=ranges, draft_head=head_dir)
        drafting = f"head {head_dir.name}" if head_dir else f"draft {draft_dir.name}"
        typer.echo(f"starting {stage_count} stage(s) of {base_dir.name} with {drafting} ...")
        start(spec, run_dir, log_level=log_level)
    except (LaunchError, ModelStoreError, ValueError, OSError) as exc:
        _fail(str(exc))
    s = spec.scheduler
    typer.echo(f"flowring is up: scheduler at {s.endpoint(s.client_port)}, logs in {run_dir / 'logs'}")
    typer.echo('  generate:  .venv/bin/flowring generate "Write a haiku about rings" --max-new-tokens 64')
    typer.echo("  status:    .venv/bin/flowring status")
    typer.echo(f"  logs:      tail -f {run_dir / 'logs'}/*.log")
    typer.echo("  stop:      .venv/bin/flowring down")


def _head_dir(ref: str, base_dir: Path) -> Path:
    """A head folder (a path, else a name in the heads cache), checked against the base."""
    from common.heads.model import check_head
    from common.heads.store import heads_dir

    path = Path(ref).expanduser()
    path = path if path.is_dir() else heads_dir() / ref
    check_head(path, base_dir)  # HeadMismatchError (a ValueError) names the mismatch in one line
    return path.resolve()


@app.command()
def down(run_dir: RunDir = DEFAULT_RUN_DIR) -> None:
    """Stop the local cluster; no process is left behind."""
    try:
        stopped = stop(run_dir)
    except LaunchError as exc:
        _fail(str(exc))
    typer.echo(f"stopped {len(stopped)} service(s)" if stopped else "no cluster running")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt text.")],
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    raw: Annotated[bool, typer.Option("--raw", help="Tokenize the prompt as is (no chat template).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print text, token ids and stats as JSON.")] = False,
    stream: Annotated[bool, typer.Option("--stream", help="Print text as tokens are accepted.")] = False,
    mode: Annotated[str, typer.Option(help="ar, chunk, pipedec or flowspec (default: the cluster's).")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 600.0,
    run_dir: RunDir = DEFAULT_RUN_DIR,
) -> None:
    """Generate a completion on the running cluster (Ctrl-C cancels it there too)."""
    spec = _cluster(run_dir)
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "raw": raw, "mode": mode}
    try:
        with client_for(spec, timeout) as client:
            reply = _stream(client, prompt, options) if stream else client.generate(prompt, **options)
    except ClusterUnavailable as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # the client has already cancelled the request on the cluster
        typer.echo("\ncancelled", err=True)
        raise typer.Exit(130) from None
    if not reply.ok:
        _fail(reply.error)
    if as_json:
        typer.echo(json.dumps({"text": reply.text, "token_ids": list(reply.token_ids), "stats": reply.stats}))
    elif stream:
        stats = reply.stats
        typer.echo(f"\n[{stats.get('new_tokens', 0)} tokens, {stats.get('decode_tokens_per_s', 0.0):.1f} tokens/s "
                   f"decoding, {stats.get('wall_ms', 0.0) / 1e3:.2f} s in all]", err=True)
    else:
        typer.echo(reply.text)


def _stream(client: Client, prompt: str, options: dict) -> GenerateReply:
    """Print each chunk's text as it arrives; return the final reply."""
    for msg in client.stream(prompt, **options):
        if isinstance(msg, GenerateReply):
            return msg
        typer.echo(msg.text, nl=False)
    raise AssertionError("a stream always ends with a reply")


@app.command()
def status(run_dir: RunDir = DEFAULT_RUN_DIR) -> None:
    """Say whether the cluster is up and which services reported ready."""
    spec = _cluster(run_dir)
    try:
        with client_for(spec, 5.0) as client:
            reply = client.status()
    except ClusterUnavailable as exc:
        _fail(str(exc))
    typer.echo(f"cluster {'ready' if reply.ready else 'starting'}{', busy' if reply.busy else ''}")
    for place in spec.ring:
        pid = reply.services.get(place.name)
        typer.echo(f"  {place.name:<10} {'ready, pid ' + str(pid) if pid else 'not ready'}")


def _stage_count(stages: str) -> int:
    """``auto``: a stage per three cores (drafter and verifier need theirs too), between 1 and 4."""
    if stages == "auto":
        return max(1, min(4, (os.cpu_count() or 1) // 3))
    if not stages.isdigit() or int(stages) < 1:
        _fail(f"--stages must be a positive number or auto, not {stages}")
    return int(stages)


def _cluster(run_dir: Path) -> ClusterSpec:
    path = run_dir / "cluster.json"
    if not path.exists():
        _fail(f"no cluster in {run_dir}: start one with `flowring up`")
    return ClusterSpec.load(path)


if __name__ == "__main__":
    app()
