"""``flowring profile``: what one forward costs: a stage's against transformers on the same cores, a draft's per tree level."""

from __future__ import annotations

import os
import statistics
from typing import Annotated

import typer

from common.models.dtypes import model_dtype_problem, torch_dtype
from common.speculation.tree_options import TREE_HELP
from services.cli.errors import fail

app = typer.Typer(add_completion=False, help="Measure forward costs on this machine.")



def _cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            fail(f"--cpus must look like 0-3 or 0,2,4, not {text!r}")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


@app.command()
def forward(
    base: Annotated[str, typer.Option(help="Base model: catalog name, folder or .gguf.")] = "qwen-coder-1.5b",
    layers: Annotated[str, typer.Option(help="Layer range of the stage, e.g. 0-14.")] = "0-14",
    rows: Annotated[str, typer.Option(help="New rows per forward to time, comma-separated.")] = "1,16,64,256",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "bfloat16",
    threads: Annotated[int, typer.Option(min=0, help="Torch threads (0: one per pinned core).")] = 0,
    cpus: Annotated[str, typer.Option(help="Pin this process to these cores, e.g. 0-1 (empty: no pinning).")] = "",
    context: Annotated[int, typer.Option(min=1, help="Tokens already in the KV cache.")] = 256,
    repeats: Annotated[int, typer.Option(min=3)] = 15,
    transformers: Annotated[bool, typer.Option("--transformers/--no-transformers",
                                               help="Also time transformers' same layers.")] = True,
    ops: Annotated[int, typer.Option(min=0, help="Also print each numerics' N costliest operators per row "
                                                 "count (torch.profiler; 0: none).")] = 0,
) -> None:
    """A stage's forward with row-invariant vs fused numerics (and transformers), per row count, and weight GB/s."""
    import torch

    from common.models.catalog import ModelStoreError
    from common.models.modeling import load_model_spec
    from common.models.store import resolve
    from services.bench.forward import compare, memory_bandwidth_gb_per_s

    _pin_process(dtype, cpus, threads)
    try:
        base_dir = resolve(base)
        first, _, last = layers.partition("-")
        layer_range = (int(first), int(last))
        if not 0 <= layer_range[0] < layer_range[1] <= load_model_spec(base_dir).num_layers:
            raise ValueError(f"--layers {layers} is not a range of the model's layers")
        row_counts = [int(r) for r in rows.split(",")]
        if min(row_counts) < 1:
            raise ValueError(f"--rows must be positive, not {rows}")
    except (ModelStoreError, ValueError) as exc:
        fail(str(exc))
    bandwidth = memory_bandwidth_gb_per_s()
    typer.echo(f"{base_dir.name} layers {layer_range[0]}-{layer_range[1]}, {dtype}, {torch.get_num_threads()} "
               f"thread(s) on cores {sorted(os.sched_getaffinity(0))}, KV context {context}, median of {repeats}; "
               f"memory read bandwidth {bandwidth:.1f} GB/s")
    theirs = " transformers ms | fused / transformers |" if transformers else ""
    typer.echo(f"| rows | row-invariant ms | fused ms | row-invariant / fused |{theirs} weight GB/s (row-invariant) "
               "| of bandwidth |")
    typer.echo("|---|---|---|---|" + ("---|---|" if transformers else "") + "---|---|")
    timings = compare(base_dir, layer_range, row_counts, dtype, context, repeats, transformers, ops)
    for t in timings:
        theirs = f" {t.transformers_ms:.1f} | {t.fused_ms / t.transformers_ms:.2f}x |" if t.transformers_ms else ""
        typer.echo(f"| {t.rows} | {t.invariant_ms:.1f} | {t.fused_ms:.1f} | {t.ratio:.2f}x |{theirs} "
                   f"{t.weight_gb_per_s:.1f} | {t.weight_gb_per_s / bandwidth:.0%} |")
    for t in timings if ops else ():
        for label, costs in (("row-invariant", t.invariant_ops), ("fused", t.fused_ops)):
            typer.echo(f"\n{t.rows} row(s), {label}: self CPU ms per forward")
            typer.echo("| operator | ms | calls |\n|---|---|---|")
            for cost in costs:
                typer.echo(f"| {cost.name} | {cost.ms:.2f} | {cost.calls:.0f} |")


@app.command()
def draft(
    draft_model: Annotated[str, typer.Option("--draft", help="Draft model: catalog name, folder or .gguf.")] = (
        "qwen-coder-0.5b"),
    draft_vocab: Annotated[int, typer.Option(min=0, help="Reduced draft vocabulary to compare (0: none).")] = 32768,
    prompt: Annotated[str, typer.Option(help="Prompt text, as one chat user turn (default: a code review, "
                                             "~200 tokens).")] = "",
    tree: Annotated[list[str] | None, typer.Option("--tree", help=TREE_HELP)] = None,
    steps: Annotated[int, typer.Option(min=1, help="Decode steps timed per configuration.")] = 24,
    accept: Annotated[int, typer.Option(min=0, help="Nodes accepted per step (then one next token).")] = 2,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "bfloat16",
    threads: Annotated[int, typer.Option(min=0, help="Torch threads (0: one per pinned core).")] = 0,
    cpus: Annotated[str, typer.Option(help="Pin this process to these cores, e.g. 0-1 (empty: no pinning).")] = "",
) -> None:
    """Draft ms per tree level: re-forwarding tree nodes vs keeping their KV rows, full vs reduced vocabulary."""
    import torch

    from common.models.catalog import ModelStoreError
    from common.models.modeling import load_slice
    from common.models.modeling.tokenizer import encode_prompt, load_tokenizer
    from common.models.store import resolve
    from common.speculation.draft_vocab import draft_vocabulary
    from common.speculation.tree_options import parse_tree_options
    from services.bench.draft import DEFAULT_PROMPT, DraftConfig, profile_draft

    _pin_process(dtype, cpus, threads)
    try:
        settings = parse_tree_options(tree or ())
        draft_dir = resolve(draft_model)
        ids = encode_prompt(load_tokenizer(draft_dir), prompt or DEFAULT_PROMPT, raw=False)
        reduced = draft_vocabulary(draft_dir, draft_vocab) if draft_vocab else None
    except (ModelStoreError, ValueError, TypeError) as exc:
        fail(str(exc))
    model = load_slice(draft_dir, None, with_embedding=True, with_head=True, dtype=torch_dtype(dtype))
    configs = [DraftConfig("re-forward, full vocabulary", False, None), DraftConfig("kept KV, full vocabulary", True, None)]
    if reduced is not None:
        configs.append(DraftConfig(f"kept KV, {len(reduced)} tokens", True, reduced))
    typer.echo(f"{draft_dir.name}, {dtype}, {torch.get_num_threads()} thread(s) on cores "
               f"{sorted(os.sched_getaffinity(0))}; prompt {len(ids)} tokens; fill {settings.fill_nodes} nodes x "
               f"{settings.fill_depth} levels, growth {settings.expand_nodes} nodes from {settings.expand_leaves} "
               f"leaves x {settings.grow_levels} levels a step, top-k {settings.top_k}; {steps} steps accepting "
               f"{accept} node(s) + 1")
    typer.echo("| draft | vocabulary | ms per growth level (median) | (mean) | rows per growth level | "
               "fill ms per level (median) | tokens per step |")
    typer.echo("|---|---|---|---|---|---|---|")
    for t in profile_draft(model, ids, configs, settings, steps, accept):
        fill = f"{statistics.median(t.fill_ms_per_level):.1f}" if t.fill_ms_per_level else "-"  # no round ended
        typer.echo(f"| {t.label} | {t.vocab} | {statistics.median(t.grow_ms):.1f} | {statistics.mean(t.grow_ms):.1f} | "
                   f"{t.grow_rows:.1f} | {fill} | {t.tokens_per_step:.2f} |")


def _pin_process(dtype: str, cpus: str, threads: int) -> None:
    """Check the dtype, pin this process to ``cpus`` (if given) and set torch's threads (0: one per core)."""
    import torch


    if problem := model_dtype_problem(dtype):
        fail(f"--{problem}")
    if cpus:
        os.sched_setaffinity(0, _cpu_list(cpus))
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
