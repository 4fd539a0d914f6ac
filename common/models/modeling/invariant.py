"""Batch- and layout-invariant kernels: a row's result never depends on the rows computed beside it.

A matrix kernel may pick another code path, and so another summation order, for another number
of rows; an attention kernel sums a row's keys in an order set by their cache slots and by the
keys it cannot see. In bfloat16 either can flip a near-tie, so the same token would get another
hidden state in an autoregressive step, a prefill chunk or a draft-tree segment. Here:

- a linear layer runs its rows in blocks of power-of-two sizes between a smallest and a largest
  size (the last block padded with zero rows), a range probed once per weight shape, dtype,
  device and thread count to give bitwise the same rows at every size and offset;
- attention runs each row alone over its visible keys only, gathered in slot order (which the
  cache keeps in position order) into a contiguous buffer, exactly as a single autoregressive row
  over a cache holding just those keys.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LARGEST_BLOCK_ROWS = 32  # the largest row block tried; larger ones rarely keep a kernel's path
_HUGE = 2.0**30  # a probe row's cancelling pair: another summation order loses or keeps the small terms


@dataclass(frozen=True)
class RowBlocks:
    """Row-block sizes that agree bitwise: the powers of two from ``smallest`` to ``largest``."""

    smallest: int
    largest: int

    def split(self, rows: int) -> list[int]:
        """Sizes of consecutive blocks covering ``rows``, the last one padded up to ``smallest``."""
        if rows < 0:
            raise ValueError(f"rows must be non-negative, got {rows}")
        sizes = []
        while rows > 0:
            size = max(self.smallest, min(self.largest, 1 << (rows.bit_length() - 1)))
            sizes.append(size)
            rows -= size
        return sizes


@functools.cache
def probe_row_blocks(out_features: int, in_features: int, dtype: torch.dtype, device: str, threads: int) -> RowBlocks:
    """The widest range of block sizes whose rows agree bitwise for a weight of this shape.

    A kernel's path depends on shapes, not values, so the probe uses its own weight ``u 1ᵀ`` and
    rows holding a cancelling pair ``±2^30`` at random places among small values: two summation
    orders then almost surely give different rows, where ordinary data hides the difference in
    all but a few elements in ten thousand. ``threads`` is in the key: a path may depend on it.
    """
    assert threads == torch.get_num_threads(), "probe under the thread count it is keyed by"
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, 1, generator=generator).to(dtype).expand(-1, in_features)
    weight = weight.contiguous().to(device)
    x = torch.randn(LARGEST_BLOCK_ROWS, in_features, generator=generator)
    for row in x:
        first, second = torch.randperm(in_features, generator=generator)[:2].tolist()
        row[first], row[second] = _HUGE, -_HUGE
    x = x.to(dtype).to(device)
    sizes = [1 << i for i in range(LARGEST_BLOCK_ROWS.bit_length())]
    results = {
        size: torch.cat([F.linear(x[s : s + size], weight) for s in range(0, LARGEST_BLOCK_ROWS, size)])
        for size in sizes
    }
    best = RowBlocks(1, 1)
    for smallest in sizes:
        largest = smallest
        for size in sizes:
            if size > largest and torch.equal(results[size], results[smallest]):
                largest = size
            elif size > largest:
                break
        if largest // smallest > best.largest // best.smallest:
            best = RowBlocks(smallest, largest)
    return best


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` for ``x`` ``[L, in]``, each row bitwise the same whatever rows ride with it.

    The bias is added apart: a kernel that fuses it for some row counts and not others rounds
    twice in one case and once in the other.
    """
    weight = layer.weight
    blocks = probe_row_blocks(weight.shape[0], weight.shape[1], x.dtype, str(x.device), torch.get_num_threads())
    rows = x.shape[0]
    sizes = blocks.split(rows)
    if sizes == [rows]:
        product = F.linear(x, weight)
    else:
        if sum(sizes) > rows:
            x = torch.cat((x, x.new_zeros(sum(sizes) - rows, x.shape[1])))
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        product = torch.cat([F.linear(x[s : s + n], weight) for s, n in zip(starts, sizes, strict=True)])[:rows]
    return product if layer.bias is None else product + layer.bias


def attention(q: Tensor, keys: Tensor, values: Tensor, attend: Tensor | None) -> Tensor:
    """Each row's attention over its visible keys alone: ``[Hq, L, D]`` from keys/values ``[Hkv, T, D]``.

    ``attend``: bool ``[L, T]``, None for every key. The visible keys of a row, gathered in slot
    order, must be its context in position order; the result then depends only on them.
    """
    heads, kv_heads, rows = q.shape[0], keys.shape[0], q.shape[1]
    if attend is None:
        seen = [torch.arange(keys.shape[1], device=keys.device)] * rows
    else:
        seen = attend.nonzero()[:, 1].split(attend.sum(dim=1).tolist())  # per row: slots, ascending
    by_row = q.transpose(0, 1).contiguous()  # [L, Hq, D]
    out = torch.empty_like(by_row)
    for i, slots in enumerate(seen):
        out[i] = F.scaled_dot_product_attention(
            by_row[i][None, :, None],  # [1, Hq, 1, D], contiguous
            keys.index_select(1, slots)[None],  # [1, Hkv, Ti, D], contiguous
            values.index_select(1, slots)[None],
            enable_gqa=heads != kv_heads,
        )[0, :, 0]
    return out.transpose(0, 1)  # [Hq, L, D]
