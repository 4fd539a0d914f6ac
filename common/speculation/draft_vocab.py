"""A reduced draft vocabulary: the most frequent tokens of a corpus, the only ones a draft proposes.

As in EAGLE-3, the draft's lm_head keeps only the rows of ``draft_ids`` (e.g. 32k of Qwen's 151k),
which makes each draft forward's head cheaper. The base model still verifies over the full vocabulary,
so the output stays exact: a token outside the set is never proposed, only emitted by the base.

A draft model's set is counted over an offline corpus (Python sources of the standard library and the
installed packages, as the draft heads' instructions are read; nothing is downloaded), plus the
tokenizer's special tokens, and stored next to the model as ``draft_vocab_<size>.pt``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from common.models.modeling import ModelSlice

CORPUS_CHARS = 4_000_000  # source text counted for a draft model's set: a few seconds of tokenizing


def most_frequent_ids(counts: Counter, size: int, vocab: int, always: Iterable[int] = ()) -> Tensor | None:
    """The ``size`` most frequent token ids (``always`` first), ascending; None for the full vocabulary.

    Fewer counted tokens than asked: padded with the lowest unseen ids.
    """
    if size <= 0 or size >= vocab:
        return None
    ids = list(dict.fromkeys(t for t in always if 0 <= t < vocab))[:size]
    chosen = set(ids)
    ids += [t for t, _ in counts.most_common() if t not in chosen and 0 <= t < vocab][: size - len(ids)]
    chosen = set(ids)
    ids += [t for t in range(vocab) if t not in chosen][: size - len(ids)]
    return torch.tensor(sorted(ids), dtype=torch.long)


def draft_vocabulary(model_dir: Path, size: int, *, corpus_chars: int = CORPUS_CHARS) -> Tensor | None:
    """The draft model's ``size`` most frequent tokens: read from its folder, else counted and saved there.

    None when ``size`` is 0 or covers the whole vocabulary. A read-only folder keeps the set in memory.
    """
    from common.models.modeling import load_model_spec
    from common.models.modeling.tokenizer import load_tokenizer
    from common.speculation.heads.corpus import source_texts

    vocab = load_model_spec(model_dir).vocab_size
    if size <= 0 or size >= vocab:
        return None
    saved = Path(model_dir) / f"draft_vocab_{size}.pt"
    if saved.is_file():
        return torch.load(saved)
    tokenizer = load_tokenizer(model_dir)
    counts: Counter = Counter()
    for text in source_texts(corpus_chars):
        counts.update(tokenizer(text)["input_ids"])
    draft_ids = most_frequent_ids(counts, size, vocab, always=tokenizer.all_special_ids)
    with contextlib.suppress(OSError):  # a read-only model folder: count again next time
        torch.save(draft_ids, saved)
    return draft_ids


class DraftLogits:
    """The draft model's final norm and lm_head over every token, or over the rows of ``draft_ids`` only."""

    def __init__(self, model: ModelSlice, draft_ids: Tensor | None = None) -> None:
        assert model.with_head and model.lm_head is not None, "the draft model needs its head"
        self._model = model
        self.draft_ids = None if draft_ids is None else draft_ids.to(model.device, torch.long)
        self._weight = None if draft_ids is None else model.lm_head.weight[self.draft_ids].contiguous()  # [V', H]

    def __call__(self, hidden: Tensor) -> Tensor:
        """Float32 logits ``[L, draft_vocab]`` of hidden states ``[L, H]`` (draft-vocabulary order)."""
        if self._weight is None:
            return self._model.logits(hidden)
        model = self._model
        assert model.norm is not None, "the draft model needs its head"
        with torch.no_grad():
            return F.linear(model.norm(hidden.to(model.device, model.dtype)), self._weight).float()

    def token_ids(self, rows: Tensor) -> list[list[int]]:
        """Full-vocabulary token ids of lm_head rows ``[F, k]``."""
        return (rows if self.draft_ids is None else self.draft_ids[rows.to(self.draft_ids.device)]).tolist()
