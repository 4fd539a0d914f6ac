"""The drafter interface the drafter service drives, and tree growth shared by every drafter.

A ``Drafter`` drafts for one request over its own context: a draft model's (``common.speculation.drafting``)
or a draft head's (``common.speculation.heads``). Both grow a tree the same two ways, from a frontier they
pick the same way (``FrontierGrowth``): PipeDec's next level (the deepest nodes) and best-first growth (the
best-scoring leaves). Only ``level``, planning the children of a frontier, is their own.

A level is a ``LevelStep``: rounds of rows to forward (a draft model's: one; a head's: one per missing
depth), then the frontier's proposals. ``grow_many`` drafts the levels of several requests together: each
round is one shared forward (``SharedDraft.forward_many``: rows of every request concatenated, attention
per request over its own cache and tree mask), and one logits call serves every request's frontier. One
request alone goes through the same code. A request's proposals then depend on its neighbours only through
the kernels' numerics: with row-invariant ones (``common.models.modeling.invariant``) not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from common.speculation.draft_rows import Path
from common.speculation.tree import DraftTree


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

    def level_best(
        self, tree: DraftTree, leaves: int, width: int, top_k: int, pending: Sequence[int] = ()
    ) -> LevelStep: ...

    def add_features(self, position: int, hidden: Tensor) -> None: ...

    def fill(self, root: int, shape: TreeShape, pending: Sequence[int] = ()) -> Any:
        """A new round's tree as a ``common.speculation.fill.Fill``: levels to draft beside other requests'."""

    def context_step(self, tokens: Sequence[int]) -> Any:
        """``extend_context(tokens)`` as a ``common.speculation.fill.ContextStep``, to share forwards."""

    def has_features(self, context_length: int) -> bool: ...


class SharedDraft(Protocol):
    """The model (or head) several requests' drafters share: one forward and one logits call for all of them."""

    def forward_many(self, parts: list[Any]) -> list[Tensor]: ...

    def logits(self, hidden: Tensor) -> Tensor: ...

    def token_ids(self, rows: Tensor) -> list[list[int]]: ...


class LevelStep(Protocol):
    """One request's growth level: its parts of the shared forwards, then its frontier's proposals."""

    @property
    def shared(self) -> SharedDraft:
        """The model (or head) whose forwards this step shares with other steps of the same one."""

    @property
    def top_k(self) -> int:
        """Children proposed per frontier node."""

    def rows(self) -> Any | None:
        """This request's part of the next shared forward; None: it has no more rows to forward."""

    def take(self, hidden: Tensor) -> None:
        """The hidden states of the part ``rows`` returned last."""

    def frontier_hidden(self) -> Tensor:
        """What the logits read for the frontier ``[F, H]``, once every round ran."""

    def finish(self, values: list[list[float]], tokens: list[list[int]]) -> DraftTree:
        """The grown tree from the frontier's top ``top_k + 1`` proposals (log-probabilities, token ids)."""


@torch.no_grad()
def grow_many(shared: SharedDraft, steps: Sequence[LevelStep]) -> tuple[list[DraftTree], list[tuple[int, int]]]:
    """Every step's grown tree, and (requests, rows) of each shared forward run.

    An exception fails every step (their drafters' caches are as before the forward that failed).
    """
    forwards: list[tuple[int, int]] = []
    while True:
        parts = [(step, step.rows()) for step in steps]
        parts = [(step, part) for step, part in parts if part is not None]
        if not parts:
            break
        outs = shared.forward_many([part for _, part in parts])
        for (step, _), hidden in zip(parts, outs, strict=True):
            step.take(hidden)
        forwards.append((len(parts), sum(int(h.shape[0]) for h in outs)))
    frontier = [step.frontier_hidden() for step in steps]
    logits = shared.logits(torch.cat(frontier)).split([h.shape[0] for h in frontier])  # one call: [F_i, V] each
    trees = []
    for step, rows in zip(steps, logits, strict=True):
        logp = torch.log_softmax(rows, dim=-1)
        top = torch.topk(logp, min(step.top_k + 1, logp.shape[-1]), dim=-1)  # one spare for a known child
        trees.append(step.finish(top.values.tolist(), shared.token_ids(top.indices)))
    return trees, forwards


def best_children(tree: DraftTree, frontier: list[int], values: list[list[float]], tokens: list[list[int]],
                  width: int, top_k: int) -> DraftTree:
    """``tree`` with the ``width`` best new children of ``frontier`` (cumulative score; ties by proposal order).

    ``values``/``tokens``: each frontier node's proposals, best first; children the tree has are skipped.
    """
    existing = set(zip(tree.parents, tree.tokens, strict=True))
    candidates: list[tuple[float, int, int, int]] = []
    for f, row_values, row_tokens in zip(frontier, values, tokens, strict=True):
        fresh = [(v, t) for v, t in zip(row_values, row_tokens, strict=True) if (f, t) not in existing][:top_k]
        for value, token in fresh:
            candidates.append((tree.scores[f] + value, len(candidates), token, f))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    best = candidates[:width]
    return tree.appended([c[2] for c in best], [c[3] for c in best], [c[0] for c in best])


class FrontierGrowth:
    """Growth from a frontier: the subclass plans the frontier's children in ``level``."""

    def level(self, tree: DraftTree, frontier: list[int], width: int, top_k: int, pending=()) -> LevelStep:
        raise NotImplementedError

    def grow(self, tree: DraftTree, frontier: list[int], width: int, top_k: int, pending=()) -> DraftTree:
        """Append the ``width`` best new children of ``frontier`` nodes (by cumulative score), alone."""
        step = self.level(tree, frontier, width, top_k, pending)
        return grow_many(step.shared, [step])[0][0]

    def level_best(self, tree: DraftTree, leaves: int, width: int, top_k: int, pending=()) -> LevelStep:
        """``grow_best``'s level, to draft beside other requests' (``grow_many``)."""
        return self.level(tree, best_leaves(tree, leaves), width, top_k, pending)

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


class CandidatePool:
    """Every node a draft proposed, from the root down; creation order breaks score ties, so a parent
    always sorts before its child. ``paths`` name nodes by their tokens below the root."""

    def __init__(self, root: int) -> None:
        self.tokens, self.parents, self.scores = [root], [-1], [0.0]
        self.paths: list[Path] = [()]

    def expand(self, frontier: list[int], values: list[list[float]], tokens: list[list[int]], keep: int) -> list[int]:
        """Add each frontier node's proposed children (log-probabilities ``values``); the ``keep`` best
        new candidates by cumulative score are the next frontier."""
        candidates = []
        for parent, row_values, row_tokens in zip(frontier, values, tokens, strict=True):
            for value, token in zip(row_values, row_tokens, strict=True):
                candidates.append(len(self.tokens))
                self.tokens.append(token)
                self.parents.append(parent)
                self.scores.append(self.scores[parent] + value)
                self.paths.append((*self.paths[parent], token))
        candidates.sort(key=lambda i: (-self.scores[i], i))
        return candidates[:keep]

    def tree(self, nodes: int) -> DraftTree:
        return select_tree(self.tokens, self.parents, self.scores, nodes)


def select_tree(tokens: list[int], parents: list[int], scores: list[float], nodes: int) -> DraftTree:
    """The ``nodes`` best-scoring candidates whose ancestors are all selected, in score order."""
    order = sorted(range(1, len(tokens)), key=lambda i: (-scores[i], i))
    index = {0: 0}
    out_tokens, out_parents, out_scores = [tokens[0]], [-1], [0.0]
    for i in order:
        if len(out_tokens) > nodes:
            break
        if parents[i] not in index:
            continue  # a tie at the cut-off left its parent out
        index[i] = len(out_tokens)
        out_tokens.append(tokens[i])
        out_parents.append(index[parents[i]])
        out_scores.append(scores[i])
    return DraftTree(tuple(out_tokens), tuple(out_parents), tuple(out_scores))
