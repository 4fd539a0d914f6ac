"""The draft head module (EAGLE-1): one decoder layer over (base feature, next token) pairs.

A row holds the pair ``(f_t, x_{t+1})``, where ``f_t`` is the base model's final-normed hidden state at
position ``t``; ``fc(concat(embed(x_{t+1}), f_t))`` (2H -> H) runs through one decoder layer without
its input norm, and the output is the predicted feature ``f_{t+1}``; the base's lm_head turns a feature
into logits. The row sits at RoPE position ``t``. Embedding and lm_head come from the base checkpoint
and stay frozen; with a reduced draft vocabulary the lm_head keeps only ``draft_ids`` rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.models.modeling import KVCache, ModelSpec, load_model_spec, rope_inv_freq
from common.models.modeling.loader import read_embedding_and_head
from common.models.modeling.slice import DecoderLayer
from common.speculation.heads.config import (
    CONFIG_FILE,
    HeadConfig,
    HeadMismatchError,
    base_fingerprint,
    check_base,
)
from common.speculation.heads.packing import DRAFT_IDS, decode, encode, read_shards, write_shards


class DraftHead(nn.Module):
    """Frozen base embedding and lm_head around a trainable ``fc`` and one decoder layer."""

    def __init__(
        self,
        config: HeadConfig,
        base_spec: ModelSpec,
        embedding: Tensor,
        lm_head: Tensor,
        *,
        draft_ids: Tensor | None,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        spec = config.layer_spec(base_spec)
        h = spec.hidden_size
        self.config = config
        self.spec = spec
        self.embed_tokens = nn.Embedding.from_pretrained(embedding.to(device, dtype), freeze=True)
        self.fc = nn.Linear(2 * h, h, bias=True, dtype=dtype, device=device)
        self.layer = DecoderLayer(spec, dtype=dtype, row_invariant=False).to(device)  # drafting: fused kernels
        self.layer.input_layernorm = nn.Identity()  # EAGLE-1: the fc output enters attention unnormed
        with torch.no_grad():
            self.layer.post_attention_layernorm.weight.fill_(1.0)  # allocated uninitialised
        rows = lm_head if draft_ids is None else lm_head[draft_ids]
        if embedding is lm_head and draft_ids is None:
            self.lm_head = nn.Linear(h, spec.vocab_size, bias=False, dtype=dtype, device=device)
            self.lm_head.weight = self.embed_tokens.weight  # tied, as in the base
        else:
            self.lm_head = nn.Linear(h, rows.shape[0], bias=False, dtype=dtype, device=device)
            with torch.no_grad():
                self.lm_head.weight.copy_(rows)
        self.lm_head.weight.requires_grad_(False)
        self.draft_ids = None if draft_ids is None else draft_ids.to(device, torch.long)
        self._inv_freq = rope_inv_freq(spec, device=device)  # [D/2] float32, kept out of .to(dtype)

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    def new_cache(self, initial_capacity: int = 256) -> KVCache:
        spec = self.spec
        return KVCache(1, spec.num_kv_heads, spec.head_dim, dtype=self.dtype, device=self.device,
                       initial_capacity=initial_capacity)

    def forward(self, features: Tensor, tokens: Tensor, positions: Tensor, attend: Tensor, cache: KVCache) -> Tensor:
        """Predicted features ``[L, H]`` of ``L`` pair rows; their keys/values are appended to ``cache``.

        ``features``: ``[L, H]`` (f_t), ``tokens``: ``[L]`` (x_{t+1}), ``positions``: ``[L]`` (t),
        ``attend``: bool ``[L, cache.length + L]`` as in ``ModelSlice.forward``.
        """
        x = self.fc(torch.cat((self.embed_tokens(tokens.to(self.device)), features.to(self.device, self.dtype)), -1))
        if self._inv_freq.device != self.device:
            self._inv_freq = self._inv_freq.to(self.device)
        freqs = positions.to(self.device, torch.float32)[:, None] * self._inv_freq[None, :]  # [L, D/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [L, D]
        try:
            out = self.layer(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), attend.to(self.device), cache, 0)
        except BaseException:
            cache.rollback()
            raise
        cache.advance(x.shape[0])
        return out

    def logits(self, features: Tensor) -> Tensor:
        """Float32 logits ``[L, draft_vocab]`` of features ``[L, H]`` (draft-vocabulary order)."""
        return self.lm_head(features.to(self.device, self.dtype)).float()

    def full_ids(self, draft_rows: Tensor) -> Tensor:
        """Full-vocabulary token ids of lm_head rows."""
        return draft_rows if self.draft_ids is None else self.draft_ids[draft_rows.to(self.device)]

    def trainable_state(self) -> dict[str, Tensor]:
        """The tensors a head folder stores: ``fc``, the layer, and the draft ids if any."""
        state = {name: p.detach() for name, p in self.named_parameters() if name.startswith(("fc.", "layer."))}
        if self.draft_ids is not None:
            state[DRAFT_IDS] = self.draft_ids
        return state


def new_head(
    base_dir: Path,
    *,
    intermediate_size: int,
    draft_ids: Tensor | None,
    dtype: torch.dtype,
    device: str = "cpu",
    base_name: str = "",
    seed: int = 0,
) -> DraftHead:
    """A freshly initialised head for the base in ``base_dir``."""
    spec = load_model_spec(base_dir)
    embedding, lm_head = read_embedding_and_head(base_dir)
    vocab = spec.vocab_size if draft_ids is None else int(draft_ids.numel())
    config = HeadConfig(base_fingerprint(spec, embedding), intermediate_size, vocab, base_name)
    torch.manual_seed(seed)
    return DraftHead(config, spec, embedding, lm_head, draft_ids=draft_ids, dtype=dtype, device=device)


def save_head(head: DraftHead, head_dir: Path, *, weights: str = "bfloat16", dtype: torch.dtype | None = None,
              extra: dict[str, Any] | None = None) -> None:
    """Write the trainable tensors in format ``weights`` (``dtype``, if given, names a plain one) as shards,
    and ``config.json`` with their sha256, into ``head_dir``."""
    head_dir = Path(head_dir)
    head_dir.mkdir(parents=True, exist_ok=True)
    weights = str(dtype).removeprefix("torch.") if dtype is not None else weights
    files = write_shards(encode(head.trainable_state(), weights), head_dir)
    config = dataclasses.replace(head.config, weights=weights, weight_files=tuple(sorted(files.items())))
    (head_dir / CONFIG_FILE).write_text(config.to_json(extra), encoding="utf-8")


def check_head(head_dir: Path, base_dir: Path) -> HeadConfig:
    """The head's config; ``HeadMismatchError`` unless it was trained for the base in ``base_dir``."""
    config = HeadConfig.read(head_dir)
    embedding, _ = read_embedding_and_head(base_dir)
    check_base(config.base, base_fingerprint(load_model_spec(base_dir), embedding), Path(head_dir), Path(base_dir))
    return config


def load_head(head_dir: Path, base_dir: Path, *, dtype: torch.dtype, device: str = "cpu") -> DraftHead:
    """The head in ``head_dir`` with the embedding and lm_head of ``base_dir`` (refused unless it matches)."""
    head_dir = Path(head_dir)
    config = HeadConfig.read(head_dir)
    spec = load_model_spec(base_dir)
    embedding, lm_head = read_embedding_and_head(base_dir)
    check_base(config.base, base_fingerprint(spec, embedding), head_dir, Path(base_dir))
    state = decode(read_shards(head_dir, dict(config.weight_files)), config.weights)
    draft_ids = state.pop(DRAFT_IDS, None)
    head = DraftHead(config, spec, embedding, lm_head, draft_ids=draft_ids, dtype=dtype, device=device)
    expected = {name for name in head.trainable_state() if name != DRAFT_IDS}
    if set(state) != expected:
        raise HeadMismatchError(f"{head_dir} holds other tensors than a head of its config")
    try:
        head.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that disagrees with config.json
        raise HeadMismatchError(f"the weights in {head_dir} do not fit its config: {exc}") from exc
    head.requires_grad_(False)
    return head
