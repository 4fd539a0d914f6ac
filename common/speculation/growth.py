"""The drafter interface the drafter service drives, and tree growth shared by every drafter.

A ``Drafter`` drafts for one request over its own context: a draft model's (``common.speculation.drafting``)
or a draft head's (``common.speculation.heads``). Both grow a tree the same two ways, from a frontier they
pick the same way (``FrontierGrowth``): PipeDec's next level (the deepest nodes) and best-first growth (the
best-scoring leaves). Only ``grow``, drafting the children of a frontier, is their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from common.speculation.draft_rows import Path
from common.speculation.tree import DraftTree

if TYPE_CHECKING:
    from torch import Tensor

@dataclass(frozen=True)
class TreeShape:
    nodes: int  # draft nodes below the root
    depth: int  # levels below the root
    top_k: int


class Drafter(Protocol):
    """One request's drafter. ``takes_features``: it drafts from the base model's features (a head), which
    the verifier sends for committed tokens; a draft model takes none and always has what it needs."""

    takes_features: bool

    def extend_context(self, tokens: Sequence[int]) -> None: ...

    def draft(self, root: int, shape: TreeShape) -> DraftTree: ...

    def grow_level(self, tree: DraftTree, width: int, top_k: int, pending: Sequence[int] = ()) -> DraftTree: ...

    def grow_best(
        self, tree: DraftTree, leaves: int, width: int, top_k: int, pending: Sequence[int] = ()
    ) -> DraftTree: ...

    def add_features(self, position: int, hidden: Tensor) -> None: ...

    def has_features(self, context_length: int) -> bool: ...


class FrontierGrowth:
    """Growth from a frontier: the subclass drafts the frontier's children in ``grow``."""

    def grow(self, tree: DraftTree, frontier: list[int], width: int, top_k: int, pending=()) -> DraftTree:
        raise NotImplementedError

    def grow_level(self, tree: DraftTree, width: int, top_k: int, pending=()) -> DraftTree:
        """PipeDec growth: one more level, the ``width`` best children of the deepest nodes."""
        return self.grow(tree, deepest_nodes(tree), width, top_k, pending)

    def grow_best(self, tree: DraftTree, leaves: int, width: int, top_k: int, pending=()) -> DraftTree:
        """Best-first growth: children of the ``leaves`` best-scoring leaves, ``width`` best kept.

        One draft forward per step instead of a re-draft of ``depth`` sequential forwards: what a draft that
        is not a one-layer EAGLE head can afford on every pipeline step.
        """
        return self.grow(tree, best_leaves(tree, leaves), width, top_k, pending)


def deepest_nodes(tree: DraftTree) -> list[int]:
    depths = tree.depths()
    deepest = max(depths)
    return [i for i, d in enumerate(depths) if d == deepest]


def best_leaves(tree: DraftTree, count: int) -> list[int]:
    has_child = set(tree.parents)
    leaves = [i for i in range(len(tree)) if i not in has_child]
    return sorted(leaves, key=lambda i: (-tree.scores[i], i))[:count]


def tree_paths(tree: DraftTree) -> list[Path]:
    """Every node's token path from the root (the root's is empty)."""
    paths: list[Path] = [()]
    for i in range(1, len(tree)):
        paths.append((*paths[tree.parents[i]], tree.tokens[i]))
    return paths
