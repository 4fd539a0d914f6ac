"""Draft trees with a one-layer head: the same tree operations as ``TreeDrafter``, fed by base features.

The head's cache holds one row per committed pair ``(f_t, x_{t+1})``: ``n`` committed tokens give
``n - 1`` rows, the last (its token the root) predicting the root's feature, whose logits propose the
root's children. A tree node's row is ``(predicted feature of its parent, its token)`` at position
``root row + depth``; nodes use the head's own predicted features, so a node's row needs its parent's
first. Node rows stay in the cache, keyed by their token path from the root, so growing a tree costs
one head forward per new level, as with ``TreeDrafter``; when committed pairs extend the context,
the rows of the new root's subtree are kept (re-keyed below it) and the others become garbage that
compaction drops. Cache rows therefore lie in any order: attention masks name them explicitly.
Proposals are deterministic top-k, scores cumulative log-probabilities, nodes in score order with
parents before children, as in ``common.speculation.drafting``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from common.speculation.growth import (
    CandidatePool,
    FrontierGrowth,
    LevelStep,
    TreeShape,
    best_children,
    tree_paths,
)
from common.speculation.heads.model import DraftHead, PairRows
from common.speculation.tree import DraftTree

Path = tuple[int, ...]  # tokens from the root (excluded) down to a node
GARBAGE_ROWS = 256  # compact the cache once this many rows (and as many as live ones) are garbage


@dataclass(frozen=True)
class FeaturePairs:
    """Committed pairs: base features ``f_t`` ``[n, H]`` and the tokens ``x_{t+1}`` that follow them."""

    features: Tensor
    tokens: tuple[int, ...]

    def __post_init__(self) -> None:
        assert self.features.dim() == 2 and self.features.shape[0] == len(self.tokens), "one feature per token"


class HeadTreeDrafter(FrontierGrowth):
    """A draft head with its cache of committed pairs and tree-node rows; drafting never changes the pairs."""

    def __init__(self, head: DraftHead) -> None:
        self._head = head
        self._cache = head.new_cache()
        self._committed: list[int] = []  # cache row of every committed pair, in context order
        self._nodes: dict[Path, tuple[int, Tensor]] = {}  # node path -> (cache row, predicted feature)
        self._root_feature: Tensor | None = None  # [H] predicted feature of the last committed token

    @property
    def context_length(self) -> int:
        """Committed pair rows (one less than the committed tokens)."""
        return len(self._committed)

    def reset(self) -> None:
        self._cache.reset()
        self._committed = []
        self._nodes = {}
        self._root_feature = None

    @torch.no_grad()
    def extend_context(self, pairs: FeaturePairs, chunk: int = 256) -> None:
        """Append committed pairs: after prefill ``(f(p_i), p_{i+1})`` and ``(f(p_last), x)``; after a
        verification that accepted ``[root, a1..aj]`` then ``x``: ``(f(root), a1) .. (f(aj), x)``."""
        for start in range(0, len(pairs.tokens), chunk):
            end = min(start + chunk, len(pairs.tokens))
            n, past = end - start, self._cache.length
            attend = torch.zeros(n, past + n, dtype=torch.bool)
            attend[:, self._committed] = True
            attend[:, past:] = torch.ones(n, n, dtype=torch.bool).tril()
            positions = torch.arange(len(self._committed), len(self._committed) + n)
            ids = torch.tensor(pairs.tokens[start:end], dtype=torch.long)
            out = self._head(pairs.features[start:end], ids, positions, attend, self._cache)
            self._committed.extend(range(past, past + n))
            self._root_feature = out[-1]
        # The new root's subtree keeps its rows, re-keyed below the new root; the rest is garbage.
        k = len(pairs.tokens)
        self._nodes = {path[k:]: v for path, v in self._nodes.items() if len(path) > k and path[:k] == pairs.tokens}
        self._compact()

    @torch.no_grad()
    def draft(self, root: int, shape: TreeShape) -> DraftTree:
        """A tree rooted at ``root``, which must be the last token of the committed pairs."""
        assert self._root_feature is not None and shape.nodes >= 1 and shape.depth >= 1 and shape.top_k >= 1
        pool = CandidatePool(root)
        frontier = [0]
        for _ in range(shape.depth):
            proposals = self._proposals(self._features([pool.paths[i] for i in frontier]), shape.top_k)
            frontier = pool.expand(frontier, *proposals, keep=shape.top_k)
        return pool.tree(shape.nodes)

    @property
    def shared(self) -> DraftHead:
        """The head, shared by every request's drafter: ``forward_many`` and ``logits`` for all of them."""
        return self._head

    def level(
        self, tree: DraftTree, frontier: list[int], width: int, top_k: int, pending: FeaturePairs | None = None
    ) -> LevelStep:
        """The ``width`` best new children of ``frontier`` nodes, to draft alone (``grow``) or beside others'.

        ``pending``: committed pairs not yet in the cache, their last token the tree's root; they are
        appended first (a forward of their own). Children the tree already has are not proposed again.
        """
        assert len(tree) >= 1 and frontier
        if pending:  # FeaturePairs; FrontierGrowth passes () when there are none
            assert pending.tokens[-1] == tree.tokens[0], "pending pairs end with the root"
            self.extend_context(pending)
        return _HeadLevel(self, tree, frontier, width, top_k)

    def _features(self, paths: list[Path]) -> Tensor:
        """Predicted features ``[len(paths), H]`` of nodes; missing rows computed, one forward per depth."""
        for level in self._missing_levels(paths):
            self._take_rows(level, self._head.forward_many([self._plan_rows(level)])[0])
        return self._known_features(paths)

    def _known_features(self, paths: list[Path]) -> Tensor:
        assert self._root_feature is not None, "the head has no context yet"
        return torch.stack([self._root_feature if not p else self._nodes[p][1] for p in paths])

    def _missing_levels(self, paths: list[Path]) -> list[list[Path]]:
        """The nodes of ``paths`` (and their ancestors) lacking a row, by depth, shallowest first."""
        missing: set[Path] = set()
        for path in paths:
            while path and path not in self._nodes and path not in missing:
                missing.add(path)
                path = path[:-1]
        return [sorted(p for p in missing if len(p) == depth) for depth in sorted({len(p) for p in missing})]

    def _plan_rows(self, level: list[Path]) -> PairRows:
        """The head rows of nodes of one depth; their parents' rows exist."""
        past, n = self._cache.length, len(level)
        attend = torch.zeros(n, past + n, dtype=torch.bool)
        attend[:, self._committed] = True
        for r, path in enumerate(level):
            attend[r, past + r] = True
            for d in range(1, len(path)):
                attend[r, self._nodes[path[:d]][0]] = True
        root = self._root_feature
        assert root is not None, "the head has no context yet"
        inputs = torch.stack([root if len(p) == 1 else self._nodes[p[:-1]][1] for p in level])
        ids = torch.tensor([p[-1] for p in level], dtype=torch.long)
        position = len(self._committed) - 1 + len(level[0])
        return PairRows(inputs, ids, torch.full((n,), position, dtype=torch.long), attend, self._cache)

    def _take_rows(self, level: list[Path], out: Tensor) -> None:
        """The predicted features ``[n, H]`` of a planned level, whose rows are the cache's last ``n``."""
        past = self._cache.length - len(level)
        for r, path in enumerate(level):
            self._nodes[path] = (past + r, out[r])

    def _compact(self) -> None:
        """Drop garbage rows once there are many: live rows keep their order, renumbered."""
        live = sorted([*self._committed, *(row for row, _ in self._nodes.values())])
        if self._cache.length - len(live) < max(GARBAGE_ROWS, len(live)):
            return
        self._cache.keep(torch.tensor(live, dtype=torch.long))
        new_row = {row: i for i, row in enumerate(live)}
        self._committed = [new_row[row] for row in self._committed]
        self._nodes = {path: (new_row[row], f) for path, (row, f) in self._nodes.items()}

    @torch.no_grad()
    def _proposals(self, features: Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
        """Top-``k`` log-probabilities and full-vocabulary token ids per feature row."""
        logp = torch.log_softmax(self._head.logits(features), dim=-1)  # [F, draft_vocab]
        top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
        # One copy to the host per level (a GPU waits once): float64 holds the float32 scores and the ids exactly.
        both = torch.stack((top.values.double(), self._head.full_ids(top.indices).double())).cpu()  # [2, F, k]
        return both[0].tolist(), both[1].long().tolist()


class _HeadLevel:
    """A ``LevelStep`` of the head: one part per depth of missing frontier rows, then proposals."""

    def __init__(self, drafter: HeadTreeDrafter, tree: DraftTree, frontier: list[int], width: int,
                 top_k: int) -> None:
        self.shared, self.top_k = drafter.shared, top_k
        self._drafter, self._tree, self._frontier, self._width = drafter, tree, frontier, width
        paths = tree_paths(tree)
        self._wanted = [paths[f] for f in frontier]
        self._levels = drafter._missing_levels(self._wanted)
        self._next = 0  # levels forwarded

    def rows(self) -> PairRows | None:
        if self._next == len(self._levels):
            return None
        return self._drafter._plan_rows(self._levels[self._next])

    def take(self, hidden: Tensor) -> None:
        self._drafter._take_rows(self._levels[self._next], hidden)
        self._next += 1

    def frontier_hidden(self) -> Tensor:
        return self._drafter._known_features(self._wanted)

    def finish(self, values: list[list[float]], tokens: list[list[int]]) -> DraftTree:
        return best_children(self._tree, self._frontier, values, tokens, self._width, self.top_k)
