"""A new round's fill and a context pass, drafted beside other requests' in shared forwards.

A fill is ``TreeDrafter.draft`` cut into its levels: the pending committed tokens (a chunk per forward)
ride in the first level's forward, then each level forwards the frontier rows it lacks and one logits call
proposes the children (best-first over ``depth`` levels, ``top_k`` kept per level, the ``nodes`` best
candidates form the tree). Each level is a ``LevelStep``, so :func:`common.speculation.growth.grow_many`
drafts the same level of several requests' fills in one forward. A context pass (committed tokens into the
draft cache between rounds) is a ``ContextStep``; :func:`extend_many` runs several in shared forwards.
With row-invariant numerics a request's fill and cache are bitwise those of drafting it alone.

A drafter without shared forwards (a draft head) drafts its fill at once (``SoloFill``, ``SoloContext``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from common.speculation.draft_rows import Path
from common.speculation.growth import CandidatePool, SharedDraft, TreeShape, tree_paths
from common.speculation.tree import DraftTree

CONTEXT_CHUNK = 64  # committed tokens per forward (TreeDrafter.extend_context's chunk)


class StepDrafter(Protocol):
    """What a fill and a context pass drive a level at a time: ``common.speculation.drafting.TreeDrafter``'s
    step (declared here, so that the drafter may build fills without the two modules importing each other)."""

    _rows: Any  # the drafter's TreeRows

    @property
    def shared(self) -> Any: ...

    def _commit(self, tokens: Sequence[int]) -> list[int]: ...

    def _plan(self, pending: Sequence[int], paths: list[Path]) -> tuple[Any, list[Path]] | None: ...

    def _absorb(self, p: int, new: list[Path], hidden: Tensor) -> None: ...

    def _hidden(self, paths: list[Path]) -> Tensor: ...

    def _end_step(self) -> None: ...


class Fill(Protocol):
    """A new round's tree, drafted a level at a time: ``level`` until it returns None, then ``tree``."""

    def level(self) -> Any | None:
        """The next level's ``LevelStep``, to draft beside other requests' levels; None: the tree is done."""

    @property
    def tree(self) -> DraftTree:
        """The fill tree, once ``level`` returned None."""


class ContextStep(Protocol):
    """Committed tokens into one request's draft cache: parts of shared forwards until ``rows`` is None."""

    @property
    def shared(self) -> SharedDraft | None: ...

    def rows(self) -> Any | None: ...

    def take(self, hidden: Tensor) -> None: ...


class SoloFill:
    """A fill drafted at once by the drafter's own ``extend_context`` and ``draft``: no level to share."""

    def __init__(self, drafter: Any, root: int, shape: TreeShape, pending: Sequence[int]) -> None:
        drafter.extend_context(pending)
        self._tree: DraftTree = drafter.draft(root, shape)

    def level(self) -> None:
        return None

    @property
    def tree(self) -> DraftTree:
        return self._tree


class SoloContext:
    """A context pass done at once by the drafter's own ``extend_context``: no rows to share."""

    shared = None

    def __init__(self, drafter: Any, tokens: Sequence[int]) -> None:
        drafter.extend_context(tokens)

    def rows(self) -> None:
        return None

    def take(self, hidden: Tensor) -> None:
        raise AssertionError("a solo context pass forwards no shared rows")


@torch.no_grad()
def extend_many(shared: SharedDraft | None, steps: Sequence[ContextStep]) -> list[tuple[int, int]]:
    """Run every context pass, each round one shared forward; returns (requests, rows) of each forward."""
    forwards: list[tuple[int, int]] = []
    while True:
        parts = [(step, part) for step in steps if (part := step.rows()) is not None]
        if not parts:
            return forwards
        assert shared is not None, "only a drafter with shared forwards has rows to forward"
        outs = shared.forward_many([part for _, part in parts])
        for (step, _), hidden in zip(parts, outs, strict=True):
            step.take(hidden)
        forwards.append((len(parts), sum(int(h.shape[0]) for h in outs)))


class ModelContext:
    """A draft model's context pass: the tokens a chunk per forward (cached tree rows adopted first)."""

    def __init__(self, drafter: StepDrafter, tokens: Sequence[int]) -> None:
        self.shared = drafter.shared
        self._drafter, self._rest = drafter, drafter._commit(tokens)
        self._chunk = 0  # tokens of the part planned last

    def rows(self) -> Any | None:
        if not self._rest:
            return None
        self._chunk = min(CONTEXT_CHUNK, len(self._rest))
        planned = self._drafter._plan(self._rest[: self._chunk], [])
        assert planned is not None, "committed tokens always make rows"
        return planned[0]

    def take(self, hidden: Tensor) -> None:
        self._drafter._absorb(self._chunk, [], hidden)
        self._rest = self._rest[self._chunk :]


class ModelFill:
    """``TreeDrafter.draft`` a level at a time (the pending committed tokens riding in the first level)."""

    def __init__(self, drafter: StepDrafter, root: int, shape: TreeShape, pending: Sequence[int]) -> None:
        assert shape.nodes >= 1 and shape.depth >= 1 and shape.top_k >= 1
        assert not pending or pending[-1] == root, "pending tokens end with the root"
        self._drafter, self._shape = drafter, shape
        self._rest = drafter._commit(pending)  # committed tokens still to forward
        self._pool = CandidatePool(root)
        self._frontier = [0]
        self._created: set[Path] = set()
        self._depth = 0
        self._tree: DraftTree | None = None

    def level(self) -> _FillLevel | None:
        if self._depth == self._shape.depth:
            return None
        return _FillLevel(self, [self._pool.paths[i] for i in self._frontier])

    @property
    def tree(self) -> DraftTree:
        assert self._tree is not None, "the fill's levels ran"
        return self._tree

    def _expand(self, values: list[list[float]], tokens: list[list[int]]) -> DraftTree:
        """One level's proposals in; after the last level, the tree (the expanded rows it left out dropped)."""
        k = self._shape.top_k
        self._frontier = self._pool.expand(self._frontier, [v[:k] for v in values], [t[:k] for t in tokens], keep=k)
        self._depth += 1
        tree = self._pool.tree(self._shape.nodes)
        if self._depth == self._shape.depth:
            self._drafter._rows.discard(self._created - set(tree_paths(tree)))
            self._drafter._end_step()
            self._tree = tree
        return tree


class _FillLevel:
    """One level of a ``ModelFill`` as a ``LevelStep``: whole chunks of a long pending context alone, then
    the rest of it with the frontier's missing rows (as ``extend_context`` then ``draft`` forward them)."""

    def __init__(self, fill: ModelFill, paths: list[Path]) -> None:
        self._fill, self._paths = fill, paths
        self.shared, self.top_k = fill._drafter.shared, fill._shape.top_k
        self._part: tuple[int, list[Path], bool] | None = None  # (pending tokens, new rows, the level's last part)
        self._done = False

    def rows(self) -> Any | None:
        if self._done:
            return None
        fill = self._fill
        last = len(fill._rest) <= CONTEXT_CHUNK
        pending = fill._rest if last else fill._rest[:CONTEXT_CHUNK]
        planned = fill._drafter._plan(pending, self._paths if last else [])
        if planned is None:
            self._done = True
            return None
        rows, new = planned
        fill._created.update(new)
        self._part = (len(pending), new, last)
        return rows

    def take(self, hidden: Tensor) -> None:
        assert self._part is not None, "a part was planned"
        p, new, last = self._part
        fill = self._fill
        fill._drafter._absorb(p, new, hidden)
        fill._rest = fill._rest[p:]
        self._done, self._part = last, None

    def frontier_hidden(self) -> Tensor:
        return self._fill._drafter._hidden(self._paths)

    def finish(self, values: list[list[float]], tokens: list[list[int]]) -> DraftTree:
        return self._fill._expand(values, tokens)
