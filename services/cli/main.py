"""The ``flowring`` command: start and stop a local cluster, generate, inspect, manage models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from common.protocol import DraftSettings
from common.settings import ClusterSpec
from services.cli import bench, logs, models, plan, status, version
from services.client import ClusterUnavailable
from services.launcher import LaunchError, client_for, default_run_dir, plan_local, start, stop

app = typer.Typer(help="flowring: continuous pipelined speculative decoding over a ring of services.",
                  no_args_is_help=True, add_completion=True)
app.add_typer(models.app, name="models", help="Pull and list models in the local cache.")
app.add_typer(bench.app, name="bench", help="Run decoding modes side by side on the running cluster.")
app.add_typer(plan.app)
app.add_typer(status.app)
app.add_typer(logs.app)
app.add_typer(version.app)

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
    if not base or not draft:
        _fail("give --model NAME, or both --base and --draft")
    stage_count = _stage_count(stages)
    from common.model_store import ModelStoreError, resolve
    from common.modeling import load_model_spec
    from common.modeling.tokenizer import check_same_tokenizer
    from common.partition import explicit_ranges

    try:
        base_dir, draft_dir = resolve(base), resolve(draft)
        check_same_tokenizer(base_dir, draft_dir)
        settings = DraftSettings(top_k=top_k, fill_nodes=fill_nodes, fill_depth=fill_depth,
                                 expand_nodes=expand_nodes, expand_depth=expand_depth, segment_cap=segment_cap,
                                 expansion=expansion, expand_leaves=expand_leaves, pipedec_width=pipedec_width,
                                 grow_levels=grow_levels)
        ranges = explicit_ranges(layers, load_model_spec(base_dir).num_layers) if layers else None
        stage_count = len(ranges) if ranges else stage_count
        spec = plan_local(base_dir, draft_dir, stage_count, dtype=dtype, device=device, threads=threads,
                          draft_settings=settings, layer_ranges=ranges)
        typer.echo(f"starting {stage_count} stage(s) of {base_dir.name} with draft {draft_dir.name} ...")
        start(spec, run_dir, log_level=log_level)
    except (LaunchError, ModelStoreError, ValueError, OSError) as exc:
        _fail(str(exc))
    s = spec.scheduler
    typer.echo(f"flowring is up: scheduler at {s.endpoint(s.client_port)}, logs in {run_dir / 'logs'}")
    typer.echo('  generate:  .venv/bin/flowring generate "Write a haiku about rings" --max-new-tokens 64')
    typer.echo("  status:    .venv/bin/flowring status")
    typer.echo(f"  logs:      tail -f {run_dir / 'logs'}/*.log")
    typer.echo("  stop:      .venv/bin/flowring down")


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
    mode: Annotated[str, typer.Option(help="ar, chunk, pipedec or flowspec.")] = "flowspec",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 600.0,
    run_dir: RunDir = DEFAULT_RUN_DIR,
) -> None:
    """Generate a completion on the running cluster."""
    spec = _cluster(run_dir)
    try:
        with client_for(spec, timeout) as client:
            reply = client.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                    raw=raw, mode=mode)
    except ClusterUnavailable as exc:
        _fail(str(exc))
    if not reply.ok:
        _fail(reply.error)
    if as_json:
        typer.echo(json.dumps({"text": reply.text, "token_ids": list(reply.token_ids), "stats": reply.stats}))
    else:
        typer.echo(reply.text)


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
