"""One forward for the rows of several requests: the linear layers see every row, attention each request's own.

With the row-invariant numerics (:mod:`common.models.modeling.invariant`, the default) every row of a
linear layer, a norm, RoPE or the MLP is bitwise what it is alone, so the rows of several requests can
share those calls (on a CPU the weight reads dominate, so a few more rows cost little). Attention runs
per request, over that request's KV cache and attention mask, so each request's hidden states, keys and
values are bitwise those of its own :meth:`ModelSlice.forward`. Without row invariance a shared call
would change a request's numerics with its neighbours: the requests then run one after another, unless
the caller accepts that (``fused=True``: the drafter, whose numerics choose proposals, never the output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from common.models.modeling.kv_cache import KVCache
from common.models.modeling.slice import DecoderLayer, ModelSlice


@dataclass(frozen=True)
class Rows:
    """One request's part of a shared forward: the arguments of :meth:`ModelSlice.forward`."""

    inputs: Tensor  # token ids [L] (with the embedding) or hidden states [L, H]
    positions: Tensor  # RoPE positions [L]
    attend: Tensor | None  # bool [L, cache.length + L]; None: one row that sees every key
    cache: KVCache  # this request's cache: the rows' keys and values are appended to it


@torch.no_grad()
def forward_many(model: ModelSlice, parts: Sequence[Rows], *, fused: bool = False) -> list[Tensor]:
    """Hidden states ``[L_i, H]`` of every part, each bitwise what ``model`` returns for that part alone.

    ``fused``: share the linear layers even without row invariance; a part's hidden states may then differ
    from its solo ones in the last bits, with its neighbours (attention stays per part).

    An exception in a shared forward leaves every cache as it was; one by one (no row invariance),
    the parts before the failing one keep their rows.
    """
    if len({id(p.cache) for p in parts}) != len(parts):
        raise ValueError("each part of a shared forward needs a cache of its own")
    if len(parts) < 2 or not (model.row_invariant or fused):
        return _one_by_one(model, parts)
    xs = [model.embed(p.inputs) for p in parts]  # each [L_i, H]
    sizes = [x.shape[0] for x in xs]
    attends = [model.check_rows(n, p.positions, p.attend, p.cache) for n, p in zip(sizes, parts, strict=True)]
    caches = [p.cache for p in parts]
    x = torch.cat(xs)  # [N, H], N = sum L_i
    cos, sin = model.rope(torch.cat([p.positions for p in parts]))  # [N, D] each
    try:
        for i, layer in enumerate(cast(Sequence[DecoderLayer], model.layers)):  # typed as plain Modules
            x = layer_many(layer, i, x, cos, sin, sizes, attends, caches)
    except BaseException:
        for cache in caches:
            cache.rollback()
        raise
    for cache, n in zip(caches, sizes, strict=True):
        cache.advance(n)
    return [h.clone() for h in x.split(sizes)]  # each its own storage: sent on its own, without the others


def layer_many(layer: DecoderLayer, index: int, x: Tensor, cos: Tensor, sin: Tensor, sizes: list[int],
           attends: list[Tensor | None], caches: list[KVCache]) -> Tensor:
    """One decoder layer over the rows of every part: ``DecoderLayer.forward`` with attention split by part."""
    attn = layer.self_attn
    q, k, v = attn.project(layer.input_layernorm(x), cos, sin)  # [Hq, N, D], [Hkv, N, D] x 2
    mixed, start = [], 0
    for n, attend, cache in zip(sizes, attends, caches, strict=True):
        part = slice(start, start + n)
        keys, values = cache.extend(index, k[:, part], v[:, part])  # [Hkv, T_i, D] each
        mixed.append(attn.attention(q[:, part], keys, values, attend))  # [L_i, Hq * D]
        start += n
    x = x + attn.output(torch.cat(mixed))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _one_by_one(model: ModelSlice, parts: Sequence[Rows]) -> list[Tensor]:
    """Each part in a forward of its own."""
    return [model(p.inputs, p.positions, p.attend, p.cache) for p in parts]
