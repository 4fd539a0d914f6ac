"""The draft model's KV rows of draft-tree nodes, kept across steps and named by token path.

The draft cache is laid out ``[committed context : committed][tree rows]``. The committed context
ends with the root (the last committed token). A tree row belongs to one node below the root, named
by its token path from the root (the root excluded); it sits at position ``root + depth`` and attends
to the committed context, its ancestors' rows and itself (a ``TreeMask``). Rows are ancestor-closed
and ascending parents first: a node's row is added only with or after its parent's.

Committing tokens that follow a cached path turns that path's rows into committed context by
compaction, with no forward, and keeps the subtree below it, re-keyed under the new root; every other
tree row is dropped (a pruned branch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from common.models.modeling import KVCache
from common.speculation.tree_mask import TreeMask

Path = tuple[int, ...]  # tokens from the root (excluded) down to a node


class TreeRows:
    """Which draft-cache rows after the committed context hold which tree node, and their hidden states."""

    def __init__(self, cache: KVCache) -> None:
        self._cache = cache
        self.committed = cache.length  # rows of committed context, the root's included
        self._paths: list[Path] = []  # tree row -> node path
        self._row: dict[Path, int] = {}  # node path -> tree row
        self._hidden: list[Tensor] = []  # tree row -> final hidden state [H] (before the norm)
        self._mask = TreeMask()

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, path: Path) -> bool:
        return path in self._row

    def hidden(self, path: Path) -> Tensor:
        return self._hidden[self._row[path]]

    def reset(self) -> None:
        """Forget every row (the cache was reset)."""
        self.committed = self._cache.length
        self._paths, self._row, self._hidden = [], {}, []
        self._mask = TreeMask()

    def missing(self, paths: Sequence[Path]) -> list[Path]:
        """Paths (and ancestors) lacking a row, parents first: what a forward must add for ``paths``."""
        needed: set[Path] = set()
        for path in paths:
            while path and path not in self._row and path not in needed:
                needed.add(path)
                path = path[:-1]
        return sorted(needed, key=lambda p: (len(p), p))

    def tree_attend(self, new: Sequence[Path]) -> Tensor:
        """Tree-region mask ``[n, len + n]`` of ``new`` rows (parents first), appended after the cached rows.

        The rows join the tree mask now; ``add`` must follow with their hidden states once forwarded.
        """
        place = {path: len(self._paths) + i for i, path in enumerate(new)}
        parents = [-1 if len(p) == 1 else self._row.get(p[:-1], place.get(p[:-1], -2)) for p in new]
        assert all(q >= -1 for q in parents), "a new row's parent must be cached or come before it"
        return self._mask.append(parents)

    def add(self, paths: Sequence[Path], hidden: Tensor) -> None:
        """The forwarded rows of ``paths`` (as passed to ``tree_attend``) and their hidden states ``[n, H]``."""
        for path, h in zip(paths, hidden, strict=True):
            self._row[path] = len(self._paths)
            self._paths.append(path)
            self._hidden.append(h)
        assert self.committed + len(self._paths) == self._cache.length, "tree rows and cache disagree"

    def commit(self, tokens: Sequence[int]) -> tuple[int, Tensor | None]:
        """Commit the longest cached path that ``tokens`` starts with; drop every other branch.

        Returns how many tokens became committed context (by compaction, no forward) and the hidden
        state of the last of them (None if none). The subtree below all of ``tokens`` stays, re-keyed.
        """
        tokens = tuple(tokens)
        adopted = 0
        while adopted < len(tokens) and tokens[: adopted + 1] in self._row:
            adopted += 1
        below = [r for r, p in enumerate(self._paths) if len(p) > len(tokens) and p[: len(tokens)] == tokens]
        root_hidden = self._hidden[self._row[tokens[:adopted]]] if adopted else None
        path_rows = [self._row[tokens[:d]] for d in range(1, adopted + 1)]
        self._compact(path_rows, below)
        self.committed += adopted
        self._paths = [self._paths[r][len(tokens) :] for r in below]
        self._row = {p: i for i, p in enumerate(self._paths)}
        self._hidden = [self._hidden[r] for r in below]
        return adopted, root_hidden

    def discard(self, paths: set[Path]) -> None:
        """Drop the rows of ``paths``, which must hold every cached descendant of each of them."""
        kept = [r for r, p in enumerate(self._paths) if p not in paths]
        self._compact([], kept)
        self._paths = [self._paths[r] for r in kept]
        self._row = {p: i for i, p in enumerate(self._paths)}
        self._hidden = [self._hidden[r] for r in kept]

    def drop(self) -> None:
        """Drop every tree row: the cache holds the committed context alone."""
        self.discard(set(self._paths))

    def _compact(self, to_commit: list[int], to_keep: list[int]) -> None:
        """Cache rows: tree rows ``to_commit`` join the committed context, then ``to_keep`` stay in the tree."""
        g = self.committed
        self._cache.keep(torch.tensor([g + r for r in (*to_commit, *to_keep)], dtype=torch.long), start=g)
        self._mask.keep(to_keep)
