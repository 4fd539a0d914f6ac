"""The tree-attention mask of the draft-tree nodes a service has cached, as a growing bool matrix.

Row ``i`` marks node ``i``'s ancestors and itself (the ancestor-or-self closure): exactly the tree
nodes that node ``i`` attends to. Appending a segment and compacting after a prune are a few tensor
operations each, with no loop over rows: ancestors inside a new segment are resolved by pointer
jumping, in ``ceil(log2(depth))`` rounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

INITIAL_CAPACITY = 64


class TreeMask:
    """Ancestor-or-self rows of cached tree nodes ``0 .. size-1`` (parents precede children)."""

    def __init__(self, capacity: int = INITIAL_CAPACITY) -> None:
        self._rows = torch.zeros(capacity, capacity, dtype=torch.bool)  # [C, C]
        self.size = 0

    def append(self, parents: Sequence[int]) -> torch.Tensor:
        """Add nodes ``size .. size+n-1`` with these parents (-1: the root); return their rows ``[n, size+n]``."""
        t, n = self.size, len(parents)
        if t + n > self._rows.shape[0]:
            self._grow(t + n)
        parent = torch.tensor(parents, dtype=torch.long)  # [n]
        if n and (bool((parent >= t + torch.arange(n)).any()) or bool((parent < -1).any())):
            raise ValueError(f"parents {list(parents)} do not all precede their nodes {t}..{t + n - 1}")
        rows = torch.zeros(n, t + n, dtype=torch.bool)  # [n, t+n]
        cached = (parent >= 0) & (parent < t)
        rows[cached, :t] = self._rows[parent[cached], :t]
        index = torch.arange(n)
        rows[index, t + index] = True
        jump = torch.where(parent >= t, parent - t, -1)  # row of the in-segment parent, -1: none
        while bool((jump >= 0).any()):
            has = jump >= 0
            rows[has] |= rows[jump[has]]
            jump = torch.where(has, jump[jump.clamp(min=0)], jump)
        self._rows[t : t + n, : t + n] = rows
        self.size = t + n
        return rows

    def rows(self, first: int, count: int) -> torch.Tensor:
        """Rows of nodes ``first .. first+count-1`` over every cached node ``[count, size]``."""
        return self._rows[first : first + count, : self.size]

    def keep(self, nodes: Sequence[int]) -> None:
        """Keep these cached nodes (ascending, ancestor-closed), renumbered ``0 .. len(nodes)-1``."""
        index = torch.tensor(nodes, dtype=torch.long)
        m = index.numel()
        if m and (int(index[-1]) >= self.size or bool((index[1:] <= index[:-1]).any())):
            raise ValueError(f"keep nodes must be ascending and below {self.size}")
        kept = self._rows.index_select(0, index).index_select(1, index)  # [m, m]
        self._rows[: self.size, : self.size] = False
        self._rows[:m, :m] = kept
        self.size = m

    def _grow(self, needed: int) -> None:
        capacity = self._rows.shape[0]
        while capacity < needed:
            capacity *= 2
        grown = torch.zeros(capacity, capacity, dtype=torch.bool)
        grown[: self.size, : self.size] = self._rows[: self.size, : self.size]
        self._rows = grown
