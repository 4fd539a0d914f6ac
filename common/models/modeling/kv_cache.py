"""Preallocated, compactable key/value cache for the layers of one model slice.

Protocol used by a forward pass of ``L`` new rows:

1. for every layer ``i`` of the slice, ``extend(i, k, v)`` writes the new rows at
   ``[length, length + L)`` and returns views over ``[0, length + L)`` to attend to;
2. ``advance(L)`` then commits the rows, making ``length`` grow by ``L``.

Until ``advance`` the committed state is untouched, so ``rollback()`` cleanly drops a
half-finished pass (e.g. after an exception in a later layer).
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Per-layer K and V buffers ``[kv_heads, capacity, head_dim]`` that grow by doubling."""

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        initial_capacity: int = 256,
    ) -> None:
        # Zero layers is allowed: a slice holding only the embedding and/or head still tracks length.
        if num_layers < 0 or kv_heads <= 0 or head_dim <= 0 or initial_capacity <= 0:
            raise ValueError(
                f"KVCache sizes must be positive: layers={num_layers} kv_heads={kv_heads} "
                f"head_dim={head_dim} capacity={initial_capacity}"
            )
        self._kv_heads = kv_heads
        self._head_dim = head_dim
        self._dtype = dtype
        self._device = torch.device(device)
        self._capacity = initial_capacity
        self._keys = [self._empty(initial_capacity) for _ in range(num_layers)]  # each [Hkv, C, D]
        self._values = [self._empty(initial_capacity) for _ in range(num_layers)]  # each [Hkv, C, D]
        self._length = 0
        # Rows written by `extend` per layer but not yet committed by `advance`.
        self._pending = [0] * num_layers

    @property
    def length(self) -> int:
        """Number of committed rows, identical in every layer."""
        return self._length

    @property
    def capacity(self) -> int:
        """Rows each layer can hold before the next growth."""
        return self._capacity

    @property
    def num_layers(self) -> int:
        """Number of layers this cache holds."""
        return len(self._keys)

    @property
    def dtype(self) -> torch.dtype:
        """Element type of the buffers."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        """Device of the buffers."""
        return self._device

    @property
    def nbytes(self) -> int:
        """Bytes allocated by all K and V buffers (capacity, not just the used rows)."""
        return sum(t.numel() * t.element_size() for t in (*self._keys, *self._values))

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k``, ``v`` ``[kv_heads, L, head_dim]`` after the committed rows of ``layer``.

        Returns views ``[kv_heads, length + L, head_dim]`` of that layer's keys and values.
        """
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for a cache of {self.num_layers} layers")
        if self._pending[layer]:
            raise RuntimeError(f"layer {layer} was already extended; call advance() or rollback() first")
        expected = (self._kv_heads, k.shape[1] if k.dim() == 3 else -1, self._head_dim)
        if k.shape != expected or v.shape != expected:
            raise ValueError(
                f"k/v must be [kv_heads={self._kv_heads}, L, head_dim={self._head_dim}], "
                f"got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        new = k.shape[1]
        end = self._length + new
        if end > self._capacity:
            self._grow(end)
        self._keys[layer][:, self._length : end].copy_(k)
        self._values[layer][:, self._length : end].copy_(v)
        self._pending[layer] = new
        return self._keys[layer][:, :end], self._values[layer][:, :end]

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows now (capacity doubled past it), so that no forward up to there grows
        the buffers: on a GPU a growth is an allocation and a copy of every layer in the middle of a step."""
        self._check_no_pending("reserve")
        if rows > self._capacity:
            self._grow(rows)

    def advance(self, rows: int) -> None:
        """Commit ``rows`` new rows, which every layer must have received through ``extend``."""
        if any(p != rows for p in self._pending):
            raise RuntimeError(f"advance({rows}) but pending rows per layer are {self._pending}")
        self._length += rows
        self._pending = [0] * self.num_layers

    def rollback(self) -> None:
        """Forget rows written by ``extend`` but not committed."""
        self._pending = [0] * self.num_layers

    def keep(self, rows: Tensor, start: int = 0) -> None:
        """Compact rows ``[start, length)`` to ``rows`` (ascending, unique, in that range).

        Rows below ``start`` stay where they are (a committed prefix is never copied); ``rows``
        become ``[start, start + len(rows))``.
        """
        self._check_no_pending("keep")
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        n = rows.numel()
        if not 0 <= start <= self._length:
            raise ValueError(f"keep start {start} outside [0, {self._length}]")
        if n:
            if int(rows[0]) < start or int(rows[-1]) >= self._length:
                raise ValueError(f"keep rows must lie in [{start}, {self._length}), got {rows.tolist()}")
            if n > 1 and not bool((rows[1:] > rows[:-1]).all()):
                raise ValueError(f"keep rows must be strictly ascending, got {rows.tolist()}")
        if start + n == self._length:
            # Strictly ascending within [start, length) with every row present: the identity.
            return
        index = rows.to(self._device)
        for buffers in (self._keys, self._values):
            for buf in buffers:
                # index_select materialises the gathered rows first, so the write below cannot
                # read a row that it has already overwritten.
                buf[:, start : start + n].copy_(buf.index_select(1, index))
        self._length = start + n

    def truncate(self, length: int) -> None:
        """Drop every row at or after ``length``."""
        self._check_no_pending("truncate")
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} rows to {length}")
        self._length = length

    def reset(self) -> None:
        """Empty the cache, keeping its buffers allocated."""
        self._length = 0
        self._pending = [0] * self.num_layers

    def _check_no_pending(self, op: str) -> None:
        if any(self._pending):
            raise RuntimeError(
                f"{op}() during an unfinished forward pass; call advance() or rollback() first"
            )

    def _empty(self, capacity: int) -> Tensor:
        return torch.empty(self._kv_heads, capacity, self._head_dim, dtype=self._dtype, device=self._device)

    def _grow(self, needed: int) -> None:
        capacity = self._capacity
        while capacity < needed:
            capacity *= 2
        # Grow every layer together so that one capacity describes the whole cache; copy all
        # old rows since some layers may already hold uncommitted rows of the current pass.
        for buffers in (self._keys, self._values):
            for i, old in enumerate(buffers):
                new = self._empty(capacity)
                new[:, : self._capacity].copy_(old)
                buffers[i] = new
        self._capacity = capacity
