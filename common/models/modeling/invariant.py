"""Batch- and layout-invariant kernels: a row's result never depends on the rows computed beside it.

A matrix kernel may pick another code path, and so another summation order, for another number
of rows; an attention kernel sums a row's keys in an order set by their cache slots and by the
keys it cannot see. In bfloat16 either can flip a near-tie, so the same token would get another
hidden state in an autoregressive step, a prefill chunk or a draft-tree segment. Here:

- a linear layer runs its rows in blocks of power-of-two sizes between a smallest and a largest
  size (the last block padded with zero rows), a range probed once per weight shape, dtype,
  device and thread count to give bitwise the same rows at every size and offset (sizes up to 32
  rows on every shape; 64 to 256 rows the first time a forward has more than 32 rows);
- attention runs all rows of a segment at once with a fixed reduction layout per row
  (``common.models.modeling.blocked_attention``): each row's visible keys, gathered in slot order
  (which the cache keeps in position order), in fixed-size blocks, every matrix product's rows
  padded to a tile height probed once per head shape and thread count to give every row the same
  bits whatever rides with it; where no tile height does, each row runs alone over its keys.

Rows may come from different requests, each with its own cache: ``attention_by_source``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.models.modeling.blocked_attention import KEY_BLOCK, blocked_attention

LARGEST_BLOCK_ROWS = 32  # row blocks tried on every weight shape
WIDEST_BLOCK_ROWS = 256  # larger blocks tried, up to this, where every size up to 32 agreed
_WIDEN_LIMIT = 2**26  # weight elements above which (a vocabulary head) the probe stays at 32 rows
_HUGE = 2.0**30  # a probe row's cancelling pair: another summation order loses or keeps the small terms
TILE_HEIGHTS = (8, 16, 32, 64)  # row paddings of attention's products, tried in this order


@dataclass(frozen=True)
class RowBlocks:
    """Row-block sizes that agree bitwise: the powers of two from ``smallest`` to ``largest``, and, with
    ``any_size``, every row count from ``smallest`` to ``LARGEST_BLOCK_ROWS`` too."""

    smallest: int
    largest: int
    any_size: bool = False

    def split(self, rows: int) -> list[int]:
        """Sizes of consecutive blocks covering ``rows``; their sum exceeds ``rows`` where the last one is padded.

        Blocks of ``largest`` first; a remainder above ``LARGEST_BLOCK_ROWS`` in halving powers of two;
        the last remainder (up to ``LARGEST_BLOCK_ROWS`` rows, where a forward reads every weight once
        whatever its rows) in one block: as it is with ``any_size``, else padded up to a power of two.
        """
        if rows < 0:
            raise ValueError(f"rows must be non-negative, got {rows}")
        sizes = []
        while rows > 0:
            if rows >= self.largest:
                size = self.largest
            elif rows > LARGEST_BLOCK_ROWS:
                size = 1 << (rows.bit_length() - 1)
            elif self.any_size and rows >= self.smallest:
                size = rows
            else:
                size = max(self.smallest, 1 << (rows - 1).bit_length())
            sizes.append(size)
            rows -= size
        return sizes


def _product(x: Tensor, weight: Tensor, out: Tensor | None = None) -> Tensor:
    """``x @ weight.T``, into ``out`` where given: the one matrix kernel both the probes and ``linear`` run."""
    return torch.mm(x, weight.t(), out=out)


@functools.cache
def probe_row_blocks(out_features: int, in_features: int, dtype: torch.dtype, device: str, threads: int) -> RowBlocks:
    """The widest range of block sizes whose rows agree bitwise for a weight of this shape.

    A kernel's path depends on shapes, not values, so the probe uses its own weight ``u 1ᵀ`` and
    rows holding a cancelling pair ``±2^30`` at random places among small values: two summation
    orders then almost surely give different rows, where ordinary data hides the difference in
    all but a few elements in ten thousand. ``threads`` is in the key: a path may depend on it.
    ``any_size``: every product of the first ``n`` rows, ``n`` from ``smallest`` to 32, equals them
    (every row at every place in every height up to 32).
    """
    assert threads == torch.get_num_threads(), "probe under the thread count it is keyed by"
    weight, x = _probe_inputs(out_features, in_features, LARGEST_BLOCK_ROWS, dtype, device, seed=0)
    sizes = [1 << i for i in range(LARGEST_BLOCK_ROWS.bit_length())]
    results = {
        size: torch.cat([_product(x[s : s + size], weight) for s in range(0, LARGEST_BLOCK_ROWS, size)])
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
    if best.largest == LARGEST_BLOCK_ROWS:
        reference = results[best.smallest]
        heights = range(best.smallest, LARGEST_BLOCK_ROWS + 1)
        if all(torch.equal(_product(x[:n], weight), reference[:n]) for n in heights):
            best = RowBlocks(best.smallest, best.largest, any_size=True)
    return best


@functools.cache
def probe_widest_block(out_features: int, in_features: int, dtype: torch.dtype, device: str, threads: int) -> int:
    """The largest block, doubling from 32 up to ``WIDEST_BLOCK_ROWS`` rows, whose rows equal those of
    blocks of 32 rows; probed (like ``probe_row_blocks``) only once a forward has more than 32 rows."""
    assert threads == torch.get_num_threads(), "probe under the thread count it is keyed by"
    weight, x = _probe_inputs(out_features, in_features, WIDEST_BLOCK_ROWS, dtype, device, seed=1)
    step = LARGEST_BLOCK_ROWS
    reference, size = [_product(x[:step], weight)], step
    while size < WIDEST_BLOCK_ROWS:
        reference += [_product(x[s : s + step], weight) for s in range(size, 2 * size, step)]
        if not torch.equal(_product(x[: 2 * size], weight), torch.cat(reference)):
            break
        size *= 2
    return size


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` for ``x`` ``[L, in]``, each row bitwise the same whatever rows ride with it.

    Each block's product is written in place into the output (only a padded last block goes
    through a buffer). The bias is added apart: a kernel that fuses it for some row counts and
    not others rounds twice in one case and once in the other.
    """
    weight = layer.weight
    key = (weight.shape[0], weight.shape[1], x.dtype, str(x.device), torch.get_num_threads())
    blocks = probe_row_blocks(*key)
    rows = x.shape[0]
    if rows > blocks.largest == LARGEST_BLOCK_ROWS and weight.numel() <= _WIDEN_LIMIT:
        blocks = RowBlocks(blocks.smallest, probe_widest_block(*key), blocks.any_size)
    x = x.contiguous()
    out = x.new_empty(rows, weight.shape[0])
    start = 0
    for size in blocks.split(rows):
        part = x[start : start + size]
        if part.shape[0] == size:
            _product(part, weight, out[start : start + size])
        else:  # the padded last block
            padded = torch.cat((part, part.new_zeros(size - part.shape[0], part.shape[1])))
            out[start:] = _product(padded, weight)[: part.shape[0]]
        start += size
    return out if layer.bias is None else out.add_(layer.bias)


@dataclass(frozen=True)
class KeySource:
    """What a run of consecutive rows attends to: one request's keys and values, after this forward's
    ``KVCache.extend``, and its mask (bool ``[rows, T]``; None: one row seeing every key)."""

    rows: int
    keys: Tensor  # [Hkv, T, D]
    values: Tensor  # [Hkv, T, D]
    attend: Tensor | None


def attention(q: Tensor, keys: Tensor, values: Tensor, attend: Tensor | None) -> Tensor:
    """Each row's attention over its visible keys: ``[Hq, L, D]`` from keys/values ``[Hkv, T, D]``.

    ``attend``: bool ``[L, T]``, None for every key. The visible keys of a row, gathered in slot
    order, must be its context in position order; the result then depends only on them, bitwise.
    """
    if attend is None and q.shape[1] != 1:
        attend = torch.ones(q.shape[1], keys.shape[1], dtype=torch.bool, device=keys.device)
    tile = probe_attention_tile(q.shape[0] // keys.shape[0], keys.shape[0], q.shape[2], str(q.device),
                                torch.get_num_threads())
    if tile is None:
        return _rows_alone(q, keys, values, attend)
    return blocked_attention(q, keys, values, attend, tile)


def attention_by_source(q: Tensor, sources: Sequence[KeySource]) -> Tensor:
    """``attention`` for rows from several requests: ``q`` ``[Hq, L, D]``'s rows are split, in order,
    among ``sources``; each row's result is bitwise what it gets alone over its own source."""
    if sum(source.rows for source in sources) != q.shape[1]:
        raise ValueError(f"sources cover {sum(s.rows for s in sources)} rows, q has {q.shape[1]}")
    parts, start = [], 0
    for source in sources:
        part = q[:, start : start + source.rows]
        parts.append(attention(part, source.keys, source.values, source.attend))
        start += source.rows
    return torch.cat(parts, dim=1)


@functools.cache
def probe_attention_tile(group: int, kv_heads: int, head_dim: int, device: str, threads: int) -> int | None:
    """The smallest tile height of ``TILE_HEIGHTS`` whose blocked attention gives every row bitwise
    what it gets alone, or None (then each row runs alone).

    The probe mixes every path a row can take: rows whose keys are a prefix of the cache (a prefill
    chunk), rows that add scattered slots to a shared prefix (a tree segment), rows with more key
    blocks than others; queries carry a cancelling pair, so another summation order shows.
    """
    assert threads == torch.get_num_threads(), "probe under the thread count it is keyed by"
    generator = torch.Generator().manual_seed(0)
    rows, total = 24, 3 * KEY_BLOCK + 37
    q = torch.randn(group * kv_heads, rows, head_dim, generator=generator)
    q[..., 0], q[..., head_dim // 2] = 16.0, -16.0  # large terms, scores still far from saturating softmax
    keys = torch.randn(kv_heads, total, head_dim, generator=generator)
    values = torch.randn(kv_heads, total, head_dim, generator=generator)
    q, keys, values = (t.to(device) for t in (q, keys, values))
    attend = torch.rand(rows, total, generator=generator) < 0.5
    prefix = torch.arange(total)[None, :] < torch.randint(1, total, (rows, 1), generator=generator)
    attend = attend | prefix
    attend[: rows // 2] = prefix[: rows // 2]  # causal-like rows: a prefix of the cache
    attend = attend.to(device)
    for tile in TILE_HEIGHTS:
        together = blocked_attention(q, keys, values, attend, tile)
        if all(_probe_row_matches(q, keys, values, attend, together, i, tile) for i in range(rows)):
            return tile
    return None


def _probe_row_matches(q: Tensor, keys: Tensor, values: Tensor, attend: Tensor, together: Tensor, row: int,
                       tile: int) -> bool:
    slots = attend[row].nonzero()[:, 0]
    alone = blocked_attention(q[:, row : row + 1], keys[:, slots], values[:, slots], None, tile)
    return torch.equal(alone, together[:, row : row + 1])


def _rows_alone(q: Tensor, keys: Tensor, values: Tensor, attend: Tensor | None) -> Tensor:
    """Each row through the fused kernel alone over its visible keys, gathered in slot order."""
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


def _probe_inputs(out_features: int, in_features: int, rows: int, dtype: torch.dtype, device: str,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A probe's weight ``u 1ᵀ`` and ``rows`` rows, each with a cancelling pair ``±2^30`` among small values."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, 1, generator=generator).to(dtype).expand(-1, in_features)
    x = torch.randn(rows, in_features, generator=generator)
    for row in x:
        first, second = torch.randperm(in_features, generator=generator)[:2].tolist()
        row[first], row[second] = _HUGE, -_HUGE
    return weight.contiguous().to(device), x.to(dtype).to(device)
