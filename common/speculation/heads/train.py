"""Training a draft head by self-distillation, within a time budget, checkpointed and resumable.

Phases, each resumable from ``<out>/work``: prompts (the code corpus plus Magpie prose the base writes
itself, saved once; see ``dataset``), generation (shards; see ``distill``), training (``checkpoint.pt``
every few minutes), then the head folder in its stored format (``packing``: int8 rows by default) and
the acceptance estimate per domain on the held-apart samples, of the trained head and of the stored one. Loss as EAGLE-1: smooth-L1 regression of the next
feature plus 0.1 x cross-entropy of its logits against the base's next token, with small uniform noise
on input features; only rows predicting answer tokens count.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from common.models.modeling import KVCache, load_model_spec
from common.speculation.draft_vocab import most_frequent_ids
from common.speculation.heads.config import CONFIG_FILE, HeadConfig
from common.speculation.heads.dataset import PROMPTS_FILE, PromptPlan, PromptSet, build_prompts
from common.speculation.heads.distill import (
    GenerationSettings,
    Generator,
    Sample,
    generate_shards,
    load_generator,
    load_shards,
)
from common.speculation.heads.evaluate import Acceptance, estimate_acceptance
from common.speculation.heads.model import DraftHead, load_head, new_head, save_head
from common.speculation.heads.packing import INT8_ROWS, WEIGHT_FORMATS

TOKEN_LOSS_WEIGHT = 0.1  # EAGLE-1's weight of the token cross-entropy beside the feature regression
WARMUP_STEPS = 50
EVAL_SHARE = 0.05  # of the budget, set aside for the acceptance estimate and saving
IGNORE = -100
TRAINING_PROMPTS = "training-prompts.json"  # beside the head: every prompt of the run, for later checks


class TrainingError(RuntimeError):
    """A training run that cannot start or continue (explained in one line)."""


@dataclass(frozen=True)
class TrainSettings:
    base_dir: Path
    out_dir: Path
    device: str = "cuda"
    base_name: str = ""
    prompts_file: Path | None = None
    time_budget_min: float = 15.0
    generation_share: float = 0.4  # of the budget, for answering prompts
    max_prompts: int = 20_000  # code instructions at most
    max_prose: int = 8192  # Magpie requests sampled (0: code only)
    prose_share: float = 0.1  # of the budget, at most, for sampling Magpie requests (part of generation_share)
    prose_max_new_tokens: int = 128  # longest Magpie request
    held_out: int = 32  # prompts of each domain answered first and never trained on
    max_new_tokens: int = 256
    generate_batch: int = 256
    intermediate_size: int = 0  # 0: a quarter of the base's (a bf16 head of the 1.5B base: ~39 MiB)
    draft_vocab: int = 32_768  # 0 or >= the base's vocabulary: the full vocabulary
    tokens_per_step: int = 8192
    learning_rate: float = 5e-4
    noise: float = 0.05  # uniform input-feature noise, relative to the features' RMS
    checkpoint_every_min: float = 3.0
    eval_depth: int = 5
    eval_top_k: int = 4
    seed: int = 0
    resume: bool = False
    stop_after_min: float | None = None  # pause (checkpointed) once this invocation has run this long
    weights: str = INT8_ROWS  # how the head folder stores its tensors (packing.WEIGHT_FORMATS)
    command: str = ""  # the command line that started the run, recorded in config.json


@dataclass
class _Progress:
    """What a checkpoint records besides tensors."""

    step: int = 0
    train_s: float = 0.0
    generation_s: float = 0.0
    wall_s: float = 0.0  # every invocation's wall-clock time, up to the last checkpoint
    loss: float = 0.0  # moving average of the training loss


@dataclass(frozen=True)
class TrainSummary:
    head_dir: Path
    samples: int
    train_tokens: int
    steps: int
    generation_s: float
    train_s: float
    acceptance: dict[str, Acceptance] | None  # per domain, of the stored head; None: paused, resume to finish
    before_packing: dict[str, Acceptance] | None = None  # per domain, of the trained float32 head


class ProgressBar(Protocol):
    """What training needs of a progress bar (tqdm's, as the CLI passes it)."""

    n: float

    def update(self, n: float = 1) -> object: ...

    def set_postfix(self, **kwargs: object) -> None: ...

    def close(self) -> None: ...


def train_head(settings: TrainSettings, log: Callable[[str], None], bar: Callable[..., ProgressBar] | None = None) -> TrainSummary:
    """Run (or resume) every phase and write the head into ``settings.out_dir``."""
    work = settings.out_dir / "work"
    if settings.weights not in WEIGHT_FORMATS:
        raise TrainingError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, not {settings.weights!r}")
    if work.exists() and not settings.resume:
        raise TrainingError(f"{settings.out_dir} holds an unfinished run: pass --resume or choose another --out")
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    budget_s = settings.time_budget_min * 60
    stop_at = None if settings.stop_after_min is None else started + settings.stop_after_min * 60
    progress = _read_progress(work)
    prior_wall = progress.wall_s
    dtype = torch.bfloat16 if settings.device.startswith("cuda") else torch.float32
    generation = GenerationSettings(settings.device, settings.generate_batch, settings.max_new_tokens, dtype)
    gen_started = time.monotonic()
    prompts, generator = _prompts(settings, generation, work, stop_at or math.inf, log)
    generation_left = max(budget_s * settings.generation_share - progress.generation_s
                          - (time.monotonic() - gen_started), 0.0)
    shards = generate_shards(
        settings.base_dir, prompts.texts, prompts.held_out, work / "shards", generation,
        deadline=min(time.monotonic() + generation_left, stop_at or math.inf),
        on_batch=lambda n: log(f"answered {n} prompts ({time.monotonic() - gen_started:.0f} s)"),
        domains=prompts.domains, generator=generator,
    )
    del generator
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    progress.generation_s += time.monotonic() - gen_started
    samples = load_shards(work / "shards", settings.device)
    train = [s for s in samples if not s.held_out]
    held = [s for s in samples if s.held_out]
    if not train:
        raise TrainingError("no training samples were generated: raise --time-budget-min")
    log(f"{shards} shards: {len(train)} training and {len(held)} held-apart samples")
    head = _head(settings, train, work)
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=settings.learning_rate,
                                  betas=(0.9, 0.95), weight_decay=0.0)
    _load_checkpoint(work, head, optimizer)
    train_left = budget_s * (1 - EVAL_SHARE) - prior_wall - (time.monotonic() - started)
    train_s = progress.train_s + max(train_left, 0.0)  # the run's whole training time, all invocations
    clock = _Clock(started, prior_wall, stop_at, train_end_wall_s=budget_s * (1 - EVAL_SHARE))
    log(f"training for {max(train_left, 0.0):.0f} s (the run's wall clock so far {clock.wall_s():.0f} s of "
        f"{budget_s:.0f} s)")
    train_tokens = sum(s.tokens.numel() for s in train)
    if not _train(head, optimizer, train, settings, progress, train_s, work, bar, clock):
        log(f"paused after {progress.step} steps ({progress.train_s:.0f} s of training): run again with --resume")
        return TrainSummary(settings.out_dir, len(train), train_tokens, progress.step, progress.generation_s,
                            progress.train_s, None)
    head.eval()
    log(f"trained: {progress.step} steps in {progress.train_s:.0f} s, loss {progress.loss:.3f} (wall {clock.wall_s():.0f} s)")
    before = _acceptance(head, held or train[:8], settings)
    extra = {
        "training": {
            "samples": len(train), "held_apart": len(held), "tokens": train_tokens, "steps": progress.step,
            "generation_s": round(progress.generation_s, 1), "train_s": round(progress.train_s, 1),
            "command": settings.command,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        },
        "data_recipe": prompts.recipe,
    }
    save_head(head, settings.out_dir, weights=settings.weights, extra=extra)
    del head
    stored = load_head(settings.out_dir, settings.base_dir, dtype=torch.float32, device=settings.device)
    acceptance = _acceptance(stored, held or train[:8], settings)
    body = {"weights": settings.weights, **{d: a.as_dict() for d, a in acceptance.items()},
            "before_packing": {d: a.as_dict() for d, a in before.items()}}
    config = HeadConfig.read(settings.out_dir)  # as saved, with its weight files: now with the acceptance too
    (settings.out_dir / CONFIG_FILE).write_text(config.to_json(extra | {"acceptance": body}), encoding="utf-8")
    (settings.out_dir / "acceptance.json").write_text(json.dumps(body, indent=2) + "\n")
    (work / PROMPTS_FILE).replace(settings.out_dir / TRAINING_PROMPTS)  # kept: what the head was trained on
    shutil.rmtree(work)
    log(f"acceptance estimated and head stored (wall {clock.wall_s():.0f} s of the {budget_s:.0f} s budget)")
    return TrainSummary(settings.out_dir, len(train), train_tokens, progress.step, progress.generation_s,
                        progress.train_s, acceptance, before)


def _acceptance(head: DraftHead, held: Sequence[Sample], settings: TrainSettings) -> dict[str, Acceptance]:
    """The acceptance estimate on each domain's held-apart samples."""
    domains = sorted({s.domain for s in held})
    return {d: estimate_acceptance(head, [s for s in held if s.domain == d], settings.eval_depth, settings.eval_top_k)
            for d in domains}


def _prompts(settings: TrainSettings, generation: GenerationSettings, work: Path, deadline: float,
             log: Callable[[str], None]) -> tuple[PromptSet, Generator | None]:
    """The run's prompts, fixed in ``work/prompts.json`` at the first start; the base, if loaded for them."""
    saved = work / PROMPTS_FILE
    if saved.is_file():
        return PromptSet.load(saved), None
    plan = PromptPlan(settings.max_prompts, settings.max_prose if settings.prompts_file is None else 0,
                      settings.held_out, settings.prose_max_new_tokens, settings.generate_batch, settings.seed,
                      settings.prompts_file, prose_seconds=settings.time_budget_min * 60 * settings.prose_share)
    generator = load_generator(settings.base_dir, generation) if plan.max_prose else None
    prompts = build_prompts(plan, generator, deadline, log)
    log(f"{len(prompts.texts)} prompts: {prompts.recipe.get('prompts_per_domain')}, "
        f"{prompts.held_out} held apart")
    prompts.save(saved)
    return prompts, generator


def _head(settings: TrainSettings, train: Sequence[Sample], work: Path) -> DraftHead:
    spec = load_model_spec(settings.base_dir)
    draft_ids = _draft_vocabulary(train, settings.draft_vocab, spec.vocab_size, work)
    head = new_head(
        settings.base_dir, intermediate_size=settings.intermediate_size or spec.intermediate_size // 4,
        draft_ids=draft_ids, dtype=torch.float32, device=settings.device, base_name=settings.base_name,
        seed=settings.seed,
    )
    return head.train()


def _draft_vocabulary(train: Sequence[Sample], size: int, vocab: int, work: Path) -> Tensor | None:
    """The ``size`` most frequent token ids of the training data, ascending (saved for resuming)."""
    if size <= 0 or size >= vocab:
        return None
    saved = work / "draft_ids.pt"
    if saved.is_file():
        return torch.load(saved)
    counts: Counter[int] = Counter()
    for s in train:
        counts.update(s.tokens.tolist())
    draft_ids = most_frequent_ids(counts, size, vocab)
    torch.save(draft_ids, saved)
    return draft_ids


@dataclass(frozen=True)
class _Clock:
    started: float  # this invocation's start (time.monotonic)
    prior_wall_s: float  # earlier invocations' wall-clock time
    stop_at: float | None  # when this invocation pauses
    train_end_wall_s: float = math.inf  # the run's wall clock (all invocations) at which training ends

    def wall_s(self) -> float:
        return self.prior_wall_s + time.monotonic() - self.started

    def must_stop(self) -> bool:
        return self.stop_at is not None and time.monotonic() >= self.stop_at

    def training_over(self) -> bool:
        """Past the wall-clock end of training: steps are timed, but checkpoints and packing take time too."""
        return self.wall_s() >= self.train_end_wall_s


def _train(head: DraftHead, optimizer: torch.optim.Optimizer, train: Sequence[Sample], settings: TrainSettings,
           progress: _Progress, train_s: float, work: Path, bar: Callable[..., ProgressBar] | None, clock: _Clock) -> bool:
    """Steps until ``progress.train_s`` reaches ``train_s`` or the clock's end of training (one step at
    least), or a pause; checkpoints every few minutes and at the end. True when training is complete."""
    rms = torch.stack([s.features.float().pow(2).mean() for s in train[:256]]).mean().sqrt()
    row_of = _row_map(head)
    rng = random.Random(settings.seed + progress.step)
    last_save = time.monotonic()
    meter = bar(total=int(train_s), initial=int(progress.train_s), unit="s", desc="training") if bar else None
    first = True
    while first or (progress.train_s < train_s and not clock.training_over()):
        first = False
        order = list(range(len(train)))
        rng.shuffle(order)
        for batch in _packs(train, order, settings.tokens_per_step):
            step_started = time.monotonic()
            lr = _learning_rate(settings.learning_rate, progress.step, progress.train_s / max(train_s, 1e-9))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _loss(head, batch, row_of, settings.noise * float(rms))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 0.5)
            optimizer.step()
            progress.step += 1
            progress.loss = float(loss.detach()) if progress.step == 1 else 0.98 * progress.loss + 0.02 * float(loss.detach())
            elapsed = time.monotonic() - step_started
            progress.train_s += elapsed
            if meter is not None and int(progress.train_s) > meter.n:
                meter.update(int(progress.train_s) - meter.n)  # whole seconds: a readable bar
                meter.set_postfix(loss=f"{progress.loss:.3f}", step=progress.step, refresh=False)
            if time.monotonic() - last_save >= settings.checkpoint_every_min * 60:
                _save_checkpoint(work, head, optimizer, progress, clock)
                last_save = time.monotonic()
            if progress.train_s >= train_s or clock.must_stop() or clock.training_over():
                break
        if clock.must_stop():
            break
    if meter is not None:
        meter.close()
    _save_checkpoint(work, head, optimizer, progress, clock)
    return progress.train_s >= train_s or clock.training_over()


def _packs(train: Sequence[Sample], order: list[int], budget: int) -> list[list[Sample]]:
    packs: list[list[Sample]] = []
    current: list[Sample] = []
    used = 0
    for i in order:
        n = min(train[i].tokens.numel() - 1, budget)
        if current and used + n > budget:
            packs.append(current)
            current, used = [], 0
        current.append(train[i])
        used += n
    return packs + ([current] if current else [])


def _loss(head: DraftHead, batch: Sequence[Sample], row_of: Tensor | None, noise: float) -> Tensor:
    """EAGLE-1 loss over one pack of samples run as one block-diagonal causal sequence."""
    inputs, tokens, targets, next_tokens, positions, seq, counted = [], [], [], [], [], [], []
    for b, s in enumerate(batch):
        t = s.tokens.to(head.device, torch.long)
        n = t.numel() - 1
        inputs.append(s.features[:n])
        tokens.append(t[1 : n + 1])
        targets.append(s.features[1 : n + 1])
        next_tokens.append(torch.cat((t[2 : n + 1], t.new_full((1,), IGNORE))))
        positions.append(torch.arange(n, device=head.device))
        seq.append(torch.full((n,), b, device=head.device))
        mask = torch.zeros(n, dtype=torch.bool, device=head.device)
        mask[max(s.prompt_length - 2, 0) : n - 1] = True  # rows predicting answer tokens
        counted.append(mask)
    f_in = torch.cat(inputs).float()
    f_in = f_in + (torch.rand_like(f_in) * 2 - 1) * noise
    pos, seq_ids = torch.cat(positions), torch.cat(seq)
    attend = (seq_ids[:, None] == seq_ids[None, :]) & (pos[None, :] <= pos[:, None])  # [N, N]
    cuda = head.device.type == "cuda"
    cache = KVCache(1, head.spec.num_kv_heads, head.spec.head_dim, dtype=torch.bfloat16 if cuda else head.dtype,
                    device=head.device, initial_capacity=int(pos.numel()))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    with autocast:
        predicted = head(f_in, torch.cat(tokens), pos, attend, cache)
        keep = torch.cat(counted)
        predicted, target = predicted[keep].float(), torch.cat(targets)[keep].float()
        regression = F.smooth_l1_loss(predicted, target)
        labels = torch.cat(next_tokens)[keep]
        if row_of is not None:
            labels = torch.where(labels >= 0, row_of[labels.clamp(min=0)], labels)
        logits = head.lm_head(predicted.to(head.lm_head.weight.dtype)).float()
        token = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    return regression + TOKEN_LOSS_WEIGHT * torch.nan_to_num(token)


def _row_map(head: DraftHead) -> Tensor | None:
    """Full token id -> lm_head row (IGNORE outside the draft vocabulary)."""
    if head.draft_ids is None:
        return None
    row_of = torch.full((head.spec.vocab_size,), IGNORE, dtype=torch.long, device=head.device)
    row_of[head.draft_ids] = torch.arange(head.draft_ids.numel(), device=head.device)
    return row_of


def _learning_rate(peak: float, step: int, done: float) -> float:
    """Linear warm-up, then cosine decay to a tenth over the time budget."""
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(done, 1.0))))


def _read_progress(work: Path) -> _Progress:
    path = work / "progress.json"
    return _Progress(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else _Progress()


def _save_checkpoint(work: Path, head: DraftHead, optimizer: torch.optim.Optimizer, progress: _Progress,
                     clock: _Clock) -> None:
    """Write tensors, then the progress record (the record names a complete checkpoint)."""
    progress.wall_s = clock.wall_s()
    state = {"head": {k: v.detach().cpu() for k, v in head.trainable_state().items()}, "optimizer": optimizer.state_dict()}
    torch.save(state, work / "checkpoint.tmp")
    (work / "checkpoint.tmp").replace(work / "checkpoint.pt")
    (work / "progress.json").write_text(json.dumps(asdict(progress)), encoding="utf-8")


def _load_checkpoint(work: Path, head: DraftHead, optimizer: torch.optim.Optimizer) -> None:
    path = work / "checkpoint.pt"
    if not path.is_file():
        return
    state = torch.load(path, map_location=head.device)
    head.load_state_dict({k: v for k, v in state["head"].items() if k != "draft_ids"}, strict=False)
    optimizer.load_state_dict(state["optimizer"])
