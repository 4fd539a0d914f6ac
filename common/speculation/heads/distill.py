"""Self-distillation data: the base model answers instructions; its final-normed features are kept.

Generation is batched greedy decoding with transformers' ``AutoModelForCausalLM`` from the local
folder. One more forward over each prompt + answer (same batch) captures the final-normed hidden
states of every token. Each batch is written as one shard file, so an interrupted run resumes after
the last complete shard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common.models.modeling.tokenizer import encode_prompt, load_tokenizer

SHARD_GLOB = "shard-*.pt"


@dataclass(frozen=True)
class Sample:
    """One answered instruction: token ids ``[T]``, features ``[T, H]``, prompt length, held apart or not."""

    tokens: Tensor
    features: Tensor
    prompt_length: int
    held_out: bool
    domain: str = "code"


@dataclass(frozen=True)
class GenerationSettings:
    device: str
    batch_size: int
    max_new_tokens: int
    dtype: torch.dtype


@dataclass(frozen=True)
class Generator:
    """The base as transformers runs it, with its tokenizer, end tokens and padding token."""

    model: Any
    tokenizer: Any
    eos: list[int]
    pad: int


def load_generator(base_dir: Path, settings: GenerationSettings) -> Generator:
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=settings.dtype, local_files_only=True)
    model = model.to(settings.device).eval()  # type: ignore[arg-type]  # transformers' wrapped `to` is typed as unbound
    eos = _eos_ids(model, tokenizer)
    return Generator(model, tokenizer, eos, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0])


def generate_shards(
    base_dir: Path,
    instructions: Sequence[str],
    held_out: int,
    shard_dir: Path,
    settings: GenerationSettings,
    deadline: float,
    on_batch: Callable[[int], None] = lambda _: None,
    *,
    domains: Sequence[str] | None = None,
    generator: Generator | None = None,
) -> int:
    """Answer ``instructions`` in order (the first ``held_out`` are held apart; ``domains`` labels each)
    until done or ``deadline`` (``time.monotonic()``): a batch starts only if one as slow as the slowest so
    far still ends by then (the held-apart batches and one training batch always run). Batches already on
    disk are skipped. Returns the shards on disk. ``generator``: the base already loaded (else loaded here
    when there is work)."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    done = len(list(shard_dir.glob(SHARD_GLOB)))
    batches = _batches(len(instructions), held_out, settings.batch_size)
    must = sum(1 for b in batches if b.start < held_out) + 1  # the held-apart batches and one to train on
    if done >= len(batches) or (done >= must and time.monotonic() >= deadline):
        return done  # nothing left, or no time left: the model is not even loaded
    g = generator or load_generator(base_dir, settings)
    longest = 0.0  # the slowest batch so far: a batch starts only if one as slow still ends by the deadline
    for index in range(done, len(batches)):
        if index >= must and time.monotonic() + longest >= deadline:
            break
        started = time.monotonic()
        rows = batches[index]
        prompts = [encode_prompt(g.tokenizer, instructions[i], raw=False) for i in rows]
        labels = [domains[i] if domains else "code" for i in rows]
        samples = _answer(g.model, prompts, settings, g.eos, g.pad, [i < held_out for i in rows], labels)
        partial = shard_dir / f"shard-{index:05d}.partial"
        torch.save([vars(s) for s in samples], partial)
        partial.replace(shard_dir / f"shard-{index:05d}.pt")  # a killed run never leaves half a shard
        longest = max(longest, time.monotonic() - started)
        on_batch(len(rows))
        done = index + 1
    return done


def _batches(count: int, held_out: int, size: int) -> list[range]:
    """Prompt index ranges: the held-apart prompts first, in batches of their own, then the rest."""
    spans = ((0, held_out), (held_out, count))
    return [range(s, min(s + size, end)) for start, end in spans for s in range(start, end, size)]


def load_shards(shard_dir: Path, device: str) -> list[Sample]:
    """Every sample of every shard, features moved to ``device``."""
    samples = []
    for path in sorted(shard_dir.glob(SHARD_GLOB)):
        for row in torch.load(path, map_location="cpu"):
            samples.append(Sample(row["tokens"].to(device), row["features"].to(device), row["prompt_length"],
                                  row["held_out"], row.get("domain", "code")))
    return samples


@torch.no_grad()
def _answer(model, prompts: list[list[int]], settings: GenerationSettings, eos: list[int], pad: int,
            held_out: list[bool], domains: list[str]) -> list[Sample]:
    ids, mask = _left_pad(prompts, pad, settings.device)
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens, do_sample=False,
        pad_token_id=pad, eos_token_id=eos,
    )
    answers = [_until_eos(row.tolist(), eos) for row in out[:, ids.shape[1] :]]
    sequences = [p + a for p, a in zip(prompts, answers, strict=True)]
    ids, mask = _left_pad(sequences, pad, settings.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state  # [B, L, H]
    samples = []
    for b, seq in enumerate(sequences):
        features = hidden[b, ids.shape[1] - len(seq) :].to(torch.bfloat16).cpu()
        tokens = torch.tensor(seq, dtype=torch.int32)
        samples.append(Sample(tokens, features, len(prompts[b]), held_out[b], domains[b]))
    return samples


def _left_pad(rows: list[list[int]], pad: int, device: str) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def _until_eos(tokens: list[int], eos: list[int]) -> list[int]:
    """The answer up to and including its first end token."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def _eos_ids(model, tokenizer) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None] or [tokenizer.eos_token_id]
    return ids
