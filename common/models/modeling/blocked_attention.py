"""Attention batched over a segment's rows with a fixed reduction layout per row.

Each row's visible keys, in slot order (the cache keeps them in position order), are cut into
blocks of ``KEY_BLOCK`` keys, the last one padded at the end with keys whose score is ``-inf``.
Every number a row's output is made of then comes from its own keys in its own block layout:

- a score is one element of a float32 matrix product whose rows are padded to a multiple of
  ``tile`` (a size probed by ``common.models.modeling.invariant`` to give every row bitwise the
  same element whatever the product's height, width or batch);
- the softmax takes the row's maximum (exact in any order) and sums the row's ``exp`` left to right
  in one sequential scan (``cumsum``; padding adds exact zeros);
- each block's values are weighted by a float32 product as above, the blocks added left to right
  in one scan likewise.

Blocks whose keys are slots ``[b*B, (b+1)*B)`` for every row that sees them (a prefix of the cache
seen by all rows: the whole prompt in a prefill chunk, the committed context in a tree segment)
are computed for all rows in one product straight from the cache; a row's other blocks are
gathered from its own slots. The same row alone gets the same blocks and so the same bits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

KEY_BLOCK = 64  # keys per block: a multiple of every SIMD width
_EXP_ALIGN = 1024  # exp runs on a length that splits into whole SIMD vectors per thread


def blocked_attention(q: Tensor, keys: Tensor, values: Tensor, attend: Tensor | None, tile: int) -> Tensor:
    """``[Hq, L, D]`` from keys/values ``[Hkv, T, D]``; ``attend`` bool ``[L, T]`` or None (every key).

    Every row must see at least one key. ``tile``: the row padding of every matrix product.
    """
    heads, rows, dim = q.shape
    if rows == 1 and attend is None:
        return _one_row(q, keys, values, tile)
    kv_heads, total = keys.shape[0], keys.shape[1]
    group = heads // kv_heads
    device = q.device
    block = KEY_BLOCK
    if attend is None:
        count = torch.full((rows,), total, dtype=torch.long, device=device)
        run = count
    else:
        count = attend.sum(dim=1)  # visible keys per row
        run = torch.where(attend.all(dim=1), total, (~attend).to(torch.int8).argmax(dim=1))  # leading slots 0, 1, ...
    blocks = (count + block - 1) // block
    shared = torch.where(run == count, blocks, run // block)  # leading blocks read straight from the cache
    n_blocks, n_shared = int(blocks.max()), int(shared.max())
    width = n_blocks * block
    stacked = rows * group  # query rows of a key head: (row, head of the group), row-major
    height = -(-stacked // tile) * tile if n_shared else stacked  # rows of the shared products
    qf = (q.float() * (1.0 / math.sqrt(dim))).view(kv_heads, group, rows, dim).transpose(1, 2)  # [Hkv, L, G, D]
    index = torch.arange(n_blocks, device=device)[None, :]
    pairs = ((index >= shared[:, None]) & (index < blocks[:, None])).nonzero()  # [P, 2]: row, block gathered
    flat = _aligned_buffer(kv_heads * height * width)
    scores = flat[: kv_heads * height * width].view(kv_heads, height, width)  # [Hkv, H, NB * B]
    if n_shared:
        span = n_shared * block
        kf = _padded(keys, span)  # [Hkv, span, D] float32
        vf = _padded(values, span)
        qs = F.pad(qf.reshape(kv_heads, stacked, dim), (0, 0, 0, height - stacked))  # [Hkv, H, D]
        if span == width:
            torch.bmm(qs, kf.transpose(1, 2), out=scores)
        else:
            scores[:, :, :span] = torch.bmm(qs, kf.transpose(1, 2))
    pad = -(-group // tile) * tile - group
    by_block = scores[:, :stacked].view(kv_heads, rows, group, n_blocks, block)
    if pairs.shape[0]:
        slot = _gathered_slots(attend, count, pairs, rows, total, n_blocks)  # [P * B]
        kg = keys.index_select(1, slot).float().view(kv_heads, -1, block, dim)  # [Hkv, P, B, D]
        vg = values.index_select(1, slot).float().view(kv_heads, -1, block, dim)
        qg = F.pad(qf[:, pairs[:, 0]], (0, 0, 0, pad))  # [Hkv, P, G padded, D]
        sg = torch.matmul(qg, kg.transpose(2, 3))[:, :, :group]  # [Hkv, P, G, B]
        by_block[:, pairs[:, 0], :, pairs[:, 1]] = sg.transpose(0, 1)
    if height > stacked:  # padding rows see the shared blocks (zero scores); never read back
        seen = F.pad(count.repeat_interleave(group), (0, height - stacked), value=n_shared * block)  # [H]
        scores.masked_fill_(torch.arange(width, device=device)[None, :] >= seen[:, None], -math.inf)
    else:
        hidden = torch.arange(width, device=device)[None, :] >= count[:, None]  # [L, NB * B]
        by_block.masked_fill_(hidden.view(rows, 1, n_blocks, block), -math.inf)
    scores.sub_(scores.amax(dim=-1, keepdim=True))  # each row's exact maximum
    flat.exp_()  # every element by the vectorised path: no thread's share ends in a scalar tail
    by_key = scores.view(kv_heads, height, n_blocks, block)  # the weights
    out = torch.empty(n_blocks, kv_heads, height, dim, device=device)  # each block's weighted values
    for b in range(n_shared):
        torch.bmm(by_key[:, :, b], vf[:, b * block : (b + 1) * block], out=out[b])
    if pairs.shape[0]:
        out[n_shared:].zero_()  # a row's blocks past its own add exact zeros
        wg = by_key[:, :stacked].view(kv_heads, rows, group, n_blocks, block)[:, pairs[:, 0], :, pairs[:, 1]]
        og = torch.matmul(F.pad(wg.transpose(0, 1), (0, 0, 0, pad)), vg)[:, :, :group]  # [Hkv, P, G, D]
        out[:, :, :stacked].view(n_blocks, kv_heads, rows, group, dim)[pairs[:, 1], :, pairs[:, 0]] = og.transpose(0, 1)
    # Left to right in one sequential scan each (float64 partial sums on CPU), a row's padding adding exact zeros:
    total_weight = scores.cumsum(dim=-1)[..., -1]  # [Hkv, H]: over the row's keys in block order
    acc = out.cumsum(dim=0)[-1]  # [Hkv, H, D]: over its blocks
    result = acc[:, :stacked] / total_weight[:, :stacked, None]  # [Hkv, L * G, D]
    return result.view(kv_heads, rows, group, dim).transpose(1, 2).reshape(heads, rows, dim).to(q.dtype)


def _one_row(q: Tensor, keys: Tensor, values: Tensor, tile: int) -> Tensor:
    """``blocked_attention`` of one row seeing every key (an autoregressive step), bitwise: the same
    products, scan and buffers in the same shapes, with the masks and layouts (which the general
    path computes as tensors for any rows) worked out in Python, so a step runs a few dozen ops."""
    heads, _, dim = q.shape
    kv_heads, total = keys.shape[0], keys.shape[1]
    group = heads // kv_heads
    block = KEY_BLOCK
    n_blocks = -(-total // block)
    width = n_blocks * block
    height = -(-group // tile) * tile  # the query rows of a key head, padded to the tile
    qs = torch.zeros(kv_heads, height, dim, device=q.device)
    qs[:, :group] = (q.float() * (1.0 / math.sqrt(dim))).view(kv_heads, group, dim)
    kf, vf = _padded(keys, width), _padded(values, width)  # [Hkv, NB * B, D] float32
    flat = _aligned_buffer(kv_heads * height * width)
    scores = flat[: kv_heads * height * width].view(kv_heads, height, width)
    torch.bmm(qs, kf.transpose(1, 2), out=scores)
    if width > total:  # the query rows' padding keys; the tile's padding rows see the whole width
        scores[:, :group, total:] = -math.inf
    scores.sub_(scores.amax(dim=-1, keepdim=True))
    flat.exp_()
    by_key = scores.view(kv_heads, height, n_blocks, block)
    out = torch.empty(n_blocks, kv_heads, height, dim, device=q.device)
    for b in range(n_blocks):
        torch.bmm(by_key[:, :, b], vf[:, b * block : (b + 1) * block], out=out[b])
    total_weight = scores.cumsum(dim=-1)[:, :group, -1]  # [Hkv, G]
    result = out.cumsum(dim=0)[-1, :, :group] / total_weight[:, :, None]  # [Hkv, G, D]
    return result.reshape(heads, 1, dim).to(q.dtype)


def _padded(x: Tensor, length: int) -> Tensor:
    """``x[:, :length]`` in float32, zero rows appended past its end."""
    part = x[:, : min(length, x.shape[1])].float()
    return F.pad(part, (0, 0, 0, length - part.shape[1]))


def _gathered_slots(attend: Tensor | None, count: Tensor, pairs: Tensor, rows: int, total: int,
                    n_blocks: int) -> Tensor:
    """Cache slots of each gathered (row, block): the row's visible slots in order, padding -> slot 0."""
    block, device = KEY_BLOCK, count.device
    width = n_blocks * block
    if attend is None:
        order = torch.arange(total, device=device).expand(rows, total)
    else:
        order = torch.sort((~attend).to(torch.int8), dim=1, stable=True).indices  # visible slots first, ascending
    order = F.pad(order[:, :width], (0, max(0, width - order.shape[1])))
    slot = order.view(rows, n_blocks, block)[pairs[:, 0], pairs[:, 1]]  # [P, B]
    live = torch.arange(block, device=device)[None, :] + pairs[:, 1:] * block < count[pairs[:, 0]][:, None]
    return torch.where(live, slot, 0).reshape(-1)


def _aligned_buffer(size: int) -> Tensor:
    """A float32 buffer of ``size`` elements and a ``-inf`` tail (``exp`` makes it zeros) up to a length
    that splits into whole SIMD vectors per thread, so that an in-place ``exp`` of it all runs every
    element by the vectorised path (a scalar tail may round differently)."""
    align = _EXP_ALIGN * torch.get_num_threads()
    flat = torch.empty(size + (-size % align))
    flat[size:] = -math.inf
    return flat
