"""The draft head module (EAGLE-1): one decoder layer over (base feature, next token) pairs.

A row holds the pair ``(f_t, x_{t+1})``, where ``f_t`` is the base model's final-normed hidden state at
position ``t``; ``fc(concat(embed(x_{t+1}), f_t))`` (2H -> H) runs through one decoder layer without
its input norm, and the output is the predicted feature ``f_{t+1}``; the base's lm_head turns a feature
into logits. The row sits at RoPE position ``t``. Embedding and lm_head come from the base checkpoint
and stay frozen; with a reduced draft vocabulary the lm_head keeps only ``draft_ids`` rows.

``forward_many`` runs the rows of several requests in one call (``fc``, projections and MLP over every
row, attention per request over its own cache). The head drafts with fused kernels, so a request's rows
may differ in the last bits with their neighbours; ``use_row_invariant(True)`` makes every row bitwise
what it is alone (as the base's row-invariant numerics do), at their cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.models.modeling import KVCache, ModelSpec, invariant, load_model_spec, rope_inv_freq
from common.models.modeling.batch import layer_many
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


@dataclass(frozen=True)
class PairRows:
    """One request's part of a shared head forward: the arguments of :meth:`DraftHead.forward`."""

    features: Tensor  # [L, H] base (or predicted) features f_t
    tokens: Tensor  # [L] the tokens x_{t+1}
    positions: Tensor  # [L]
    attend: Tensor  # bool [L, cache.length + L]
    cache: KVCache


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

    @property
    def row_invariant(self) -> bool:
        """Whether every row is computed bitwise as it would be alone (else fused kernels, the default)."""
        return self.layer.mlp.row_invariant

    def use_row_invariant(self, flag: bool) -> None:
        """Switch the numerics of ``fc``, the layer and the lm_head: row-invariant (True) or fused kernels."""
        self.layer.self_attn.row_invariant = flag
        self.layer.mlp.row_invariant = flag

    def _linear(self, layer: nn.Linear, x: Tensor) -> Tensor:
        return invariant.linear(layer, x) if self.row_invariant else layer(x)

    def forward(self, features: Tensor, tokens: Tensor, positions: Tensor, attend: Tensor, cache: KVCache) -> Tensor:
        """Predicted features ``[L, H]`` of ``L`` pair rows; their keys/values are appended to ``cache``.

        ``features``: ``[L, H]`` (f_t), ``tokens``: ``[L]`` (x_{t+1}), ``positions``: ``[L]`` (t),
        ``attend``: bool ``[L, cache.length + L]`` as in ``ModelSlice.forward``.
        """
        return self.forward_many([PairRows(features, tokens, positions, attend, cache)])[0]

    def forward_many(self, parts: list[PairRows]) -> list[Tensor]:
        """Predicted features ``[L_i, H]`` of every part in one call; attention per part, over its own cache.

        An exception leaves every cache as it was.
        """
        if len({id(p.cache) for p in parts}) != len(parts):
            raise ValueError("each part of a shared head forward needs a cache of its own")
        ids = torch.cat([p.tokens for p in parts]).to(self.device)
        features = torch.cat([p.features.to(self.device, self.dtype) for p in parts])
        x = self._linear(self.fc, torch.cat((self.embed_tokens(ids), features), -1))  # [N, H]
        if self._inv_freq.device != self.device:
            self._inv_freq = self._inv_freq.to(self.device)
        positions = torch.cat([p.positions for p in parts])
        freqs = positions.to(self.device, torch.float32)[:, None] * self._inv_freq[None, :]  # [N, D/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [N, D]
        sizes = [p.tokens.shape[0] for p in parts]
        attends: list[Tensor | None] = [p.attend.to(self.device) for p in parts]
        caches = [p.cache for p in parts]
        try:
            out = layer_many(self.layer, 0, x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), sizes, attends,
                             caches)
        except BaseException:
            for cache in caches:
                cache.rollback()
            raise
        for cache, n in zip(caches, sizes, strict=True):
            cache.advance(n)
        return list(out.split(sizes))

    def logits(self, features: Tensor) -> Tensor:
        """Float32 logits ``[L, draft_vocab]`` of features ``[L, H]`` (draft-vocabulary order)."""
        return self._linear(self.lm_head, features.to(self.device, self.dtype)).float()

    def full_ids(self, draft_rows: Tensor) -> Tensor:
        """Full-vocabulary token ids of lm_head rows."""
        return draft_rows if self.draft_ids is None else self.draft_ids[draft_rows.to(self.device)]

    def token_ids(self, draft_rows: Tensor) -> list[list[int]]:
        """Full-vocabulary token ids of lm_head rows ``[F, k]``, as lists."""
        return self.full_ids(draft_rows).tolist()

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
