"""`flowring heads`: train a one-layer draft head for a base model, list the heads in the local cache.

Importable without pyzmq or structlog, so training runs on a GPU machine with only torch and
transformers (``python -m services.cli.heads train ...``).
"""

from __future__ import annotations

import shlex
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from services.cli.errors import fail

app = typer.Typer(help="Train draft heads and list the heads in the local cache.", no_args_is_help=True,
                  add_completion=False)



@app.command()
def train(
    base: Annotated[str, typer.Option(help="Base model: catalog name or Hugging Face folder.")],
    out: Annotated[Path | None, typer.Option(help="Head folder (default: the heads cache, named after the base).")] = None,
    device: Annotated[str, typer.Option(help="cuda or cpu.")] = "cuda",
    prompts: Annotated[Path | None, typer.Option(help="JSONL prompts (MT-bench style) instead of the code corpus.")] = None,
    time_budget_min: Annotated[float, typer.Option(help="Whole run, generation and training.")] = 15.0,
    generation_share: Annotated[float, typer.Option(help="Share of the budget spent generating data.")] = 0.4,
    max_prompts: Annotated[int, typer.Option(help="Most code instructions (offline corpus).")] = 20_000,
    max_prose: Annotated[int, typer.Option(help="Magpie requests the base writes itself (0: code only).")] = 8192,
    prose_share: Annotated[float, typer.Option(help="Share of the budget, at most, for writing them.")] = 0.1,
    prose_max_new_tokens: Annotated[int, typer.Option(help="Longest request the base writes.")] = 128,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer generated.")] = 256,
    generate_batch: Annotated[int, typer.Option(help="Prompts answered per batch.")] = 256,
    intermediate_size: Annotated[int, typer.Option(help="Head MLP width (0: a quarter of the base's).")] = 0,
    draft_vocab: Annotated[int, typer.Option(help="Draft vocabulary: most frequent tokens (0: full).")] = 32_768,
    tokens_per_step: Annotated[int, typer.Option(help="Token rows per training step.")] = 8192,
    learning_rate: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 5e-4,
    held_out: Annotated[int, typer.Option(help="Prompts of each domain held apart for the acceptance estimate.")] = 32,
    weights: Annotated[str, typer.Option(help="Stored weights: int8-rows (int8, a scale per row), bfloat16 "
                                              "or float32.")] = "int8-rows",
    eval_depth: Annotated[int, typer.Option(help="Chain depth of the acceptance estimate.")] = 5,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    stop_after_min: Annotated[float | None, typer.Option(help="Pause, checkpointed, after this many minutes.")] = None,
    seed: int = 0,
) -> None:
    """Self-distil the base model's answers into a one-layer EAGLE-style head (resumable)."""
    from tqdm.auto import tqdm

    from common.models.catalog import ModelStoreError
    from common.models.modeling import ModelingError
    from common.models.store import resolve
    from common.prompts import PromptFileError
    from common.speculation.heads.corpus import BenchmarkLeakError
    from common.speculation.heads.magpie import MagpieError
    from common.speculation.heads.packing import WEIGHT_FORMATS
    from common.speculation.heads.store import heads_dir
    from common.speculation.heads.train import TrainingError, TrainSettings, train_head

    if weights not in WEIGHT_FORMATS:
        fail(f"--weights must be one of {', '.join(WEIGHT_FORMATS)}, not {weights}")
    try:
        base_dir = resolve(base)
    except ModelStoreError as exc:
        fail(str(exc))
    settings = TrainSettings(
        base_dir=base_dir, out_dir=out or heads_dir() / base_dir.name, device=device, base_name=base_dir.name,
        prompts_file=prompts, time_budget_min=time_budget_min, generation_share=generation_share,
        max_prompts=max_prompts, max_prose=max_prose, prose_share=prose_share,
        prose_max_new_tokens=prose_max_new_tokens, held_out=held_out, max_new_tokens=max_new_tokens, generate_batch=generate_batch,
        intermediate_size=intermediate_size, draft_vocab=draft_vocab, tokens_per_step=tokens_per_step,
        learning_rate=learning_rate, eval_depth=eval_depth, seed=seed, resume=resume,
        stop_after_min=stop_after_min, weights=weights, command=shlex.join(["flowring", "heads", *sys.argv[1:]]),
    )
    try:
        # A redraw every few seconds: logs of a non-interactive run stay short.
        summary = train_head(settings, lambda line: typer.echo(line, err=True), partial(tqdm, mininterval=5.0))
    except (TrainingError, BenchmarkLeakError, ModelingError, PromptFileError, MagpieError) as exc:
        fail(str(exc))
    typer.echo(f"data: {summary.samples} samples, {summary.train_tokens} tokens, generated in {summary.generation_s:.0f} s")
    typer.echo(f"training: {summary.steps} steps in {summary.train_s:.0f} s")
    if summary.acceptance is None:
        typer.echo(f"paused: continue with the same command and --resume (work in {summary.head_dir / 'work'})")
        return
    size = sum(f.stat().st_size for f in summary.head_dir.glob("head-*-of-*.safetensors"))
    typer.echo(f"head: {summary.head_dir} ({weights} weights, {size / 2**20:.1f} MiB)")
    for domain, a in summary.acceptance.items():
        before = (summary.before_packing or {}).get(domain)
        typer.echo(
            f"acceptance {domain} (held apart, greedy chain depth {a.depth}, {a.starts} starts): {a.mean_accepted:.2f} "
            f"draft tokens accepted, {a.tokens_per_round:.2f} tokens per round; top-1 {a.top1_agreement:.3f}, "
            f"top-{a.top_k} {a.topk_agreement:.3f}"
            + (f"; before packing {before.tokens_per_round:.2f} tokens per round" if before else "")
        )


@app.command("list")
def list_(root: Annotated[Path | None, typer.Option(help="Heads folder (default: the local cache).")] = None) -> None:
    """The heads in the local cache."""
    from common.speculation.heads.shipped import SHIPPED_DIR
    from common.speculation.heads.store import heads_dir, list_heads

    entries = list_heads(root) + ([] if root else list_heads(SHIPPED_DIR))
    if not entries:
        typer.echo(f"no heads in {root or heads_dir()}, none shipped")
        return
    for e in entries:
        typer.echo(f"{e.name}\tbase {e.base_name or '?'}\tmlp {e.intermediate_size}\tvocab {e.draft_vocab_size}\t"
                   f"{e.weights}\t{e.size_bytes / 2**20:.1f} MiB\t{e.acceptance}\t{e.path}")


if __name__ == "__main__":
    app()
