"""`flowring heads`: train a one-layer draft head for a base model, list the heads in the local cache.

Importable without pyzmq or structlog, so training runs on a GPU machine with only torch and
transformers (``python -m services.cli.heads train ...``).
"""

from __future__ import annotations

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
    max_prompts: Annotated[int, typer.Option(help="Most prompts answered.")] = 20_000,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer generated.")] = 256,
    generate_batch: Annotated[int, typer.Option(help="Prompts answered per batch.")] = 256,
    intermediate_size: Annotated[int, typer.Option(help="Head MLP width (0: a quarter of the base's).")] = 0,
    draft_vocab: Annotated[int, typer.Option(help="Draft vocabulary: most frequent tokens (0: full).")] = 32_768,
    tokens_per_step: Annotated[int, typer.Option(help="Token rows per training step.")] = 8192,
    learning_rate: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 5e-4,
    held_out: Annotated[int, typer.Option(help="Prompts held apart for the acceptance estimate.")] = 64,
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
    from common.speculation.heads.store import heads_dir
    from common.speculation.heads.train import TrainingError, TrainSettings, train_head

    try:
        base_dir = resolve(base)
    except ModelStoreError as exc:
        fail(str(exc))
    settings = TrainSettings(
        base_dir=base_dir, out_dir=out or heads_dir() / base_dir.name, device=device, base_name=base,
        prompts_file=prompts, time_budget_min=time_budget_min, generation_share=generation_share,
        max_prompts=max_prompts, held_out=held_out, max_new_tokens=max_new_tokens, generate_batch=generate_batch,
        intermediate_size=intermediate_size, draft_vocab=draft_vocab, tokens_per_step=tokens_per_step,
        learning_rate=learning_rate, eval_depth=eval_depth, seed=seed, resume=resume,
        stop_after_min=stop_after_min,
    )
    try:
        # A redraw every few seconds: logs of a non-interactive run stay short.
        summary = train_head(settings, lambda line: typer.echo(line, err=True), partial(tqdm, mininterval=5.0))
    except (TrainingError, BenchmarkLeakError, ModelingError, PromptFileError) as exc:
        fail(str(exc))
    typer.echo(f"data: {summary.samples} samples, {summary.train_tokens} tokens, generated in {summary.generation_s:.0f} s")
    typer.echo(f"training: {summary.steps} steps in {summary.train_s:.0f} s")
    a = summary.acceptance
    if a is None:
        typer.echo(f"paused: continue with the same command and --resume (work in {summary.head_dir / 'work'})")
        return
    typer.echo(f"head: {summary.head_dir}")
    typer.echo(
        f"acceptance (held apart, greedy chain depth {a.depth}, {a.starts} starts): {a.mean_accepted:.2f} draft tokens "
        f"accepted, {a.tokens_per_round:.2f} tokens per round; top-1 {a.top1_agreement:.3f}, "
        f"top-{a.top_k} {a.topk_agreement:.3f}"
    )


@app.command("list")
def list_(root: Annotated[Path | None, typer.Option(help="Heads folder (default: the local cache).")] = None) -> None:
    """The heads in the local cache."""
    from common.speculation.heads.store import heads_dir, list_heads

    entries = list_heads(root)
    if not entries:
        typer.echo(f"no heads in {root or heads_dir()}")
        return
    for e in entries:
        tokens = "-" if e.tokens_per_round is None else f"{e.tokens_per_round:.2f}"
        typer.echo(f"{e.name}\tbase {e.base_name or '?'}\tmlp {e.intermediate_size}\tvocab {e.draft_vocab_size}\t"
                   f"tokens/round {tokens}\t{e.size_bytes / 2**20:.1f} MiB\t{e.path}")


if __name__ == "__main__":
    app()
