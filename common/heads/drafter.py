"""Draft trees with a one-layer head: the same tree operations as ``TreeDrafter``, fed by base features.

The head's cache holds one row per committed pair ``(f_t, x_{t+1})``: ``n`` committed tokens give
``n - 1`` rows, the last (its token the root) predicting the root's feature, whose logits propose the
root's children. A tree node's row is ``(predicted feature of its parent, its token)`` at position
``root row + depth``; nodes use the head's own predicted features, so drafting a node needs its
ancestors first: one head forward per tree level. Proposals are deterministic top-k, scores
cumulative log-probabilities, nodes in score order with parents before children, as in
``common.drafting``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from common.drafting import TreeShape, best_leaves, deepest_nodes, select_tree
from common.heads.model import DraftHead
from common.modeling import causal_attend
from common.tree import DraftTree


@dataclass(frozen=True)
class FeaturePairs:
    """Committed pairs: base features ``f_t`` ``[n, H]`` and the tokens ``x_{t+1}`` that follow them."""

    features: Tensor
    tokens: tuple[int, ...]

    def __post_init__(self) -> None:
        assert self.features.dim() == 2 and self.features.shape[0] == len(self.tokens), "one feature per token"


class HeadTreeDrafter:
    """A draft head with its pair cache; ``draft`` and ``grow`` never change the committed pairs."""

    def __init__(self, head: DraftHead) -> None:
        self._head = head
        self._cache = head.new_cache()
        self._root_feature: Tensor | None = None  # [H] predicted feature of the last committed token

    @property
    def context_length(self) -> int:
        """Committed pair rows (one less than the committed tokens)."""
        return self._cache.length

    def reset(self) -> None:
        self._cache.reset()
        self._root_feature = None

    @torch.no_grad()
    def extend_context(self, pairs: FeaturePairs, chunk: int = 256) -> None:
        """Append committed pairs: after prefill ``(f(p_i), p_{i+1})`` and ``(f(p_last), x)``; after a
        verification that accepted ``[root, a1..aj]`` then ``x``: ``(f(root), a1) .. (f(aj), x)``."""
        for start in range(0, len(pairs.tokens), chunk):
            end = min(start + chunk, len(pairs.tokens))
            past = self._cache.length
            out = self._head(
                pairs.features[start:end], torch.tensor(pairs.tokens[start:end], dtype=torch.long),
                torch.arange(past, past + end - start), causal_attend(past, end - start), self._cache,
            )
            self._root_feature = out[-1]

    @torch.no_grad()
    def draft(self, root: int, shape: TreeShape) -> DraftTree:
        """A tree rooted at ``root``, which must be the last token of the committed pairs."""
        assert self._root_feature is not None and shape.nodes >= 1 and shape.depth >= 1 and shape.top_k >= 1
        committed = self._cache.length
        k = shape.top_k
        pool_tokens, pool_parents, pool_scores = [root], [-1], [0.0]
        features = {0: self._root_feature}  # pool index -> predicted feature
        cache_row = {0: committed - 1}
        logp, tokens = self._proposals(self._root_feature[None], k)
        frontier = []
        for score, token in zip(logp[0], tokens[0], strict=True):
            frontier.append(len(pool_tokens))
            pool_tokens.append(token)
            pool_parents.append(0)
            pool_scores.append(score)
        try:
            for level in range(1, shape.depth):
                out = self._rows(frontier, pool_tokens, pool_parents, features, cache_row, committed, committed - 1 + level)
                features.update(zip(frontier, out, strict=True))
                logp, tokens = self._proposals(out, k)
                candidates = []
                for f, (values, ids) in enumerate(zip(logp, tokens, strict=True)):
                    parent = frontier[f]
                    for value, token in zip(values, ids, strict=True):
                        candidates.append(len(pool_tokens))
                        pool_tokens.append(token)
                        pool_parents.append(parent)
                        pool_scores.append(pool_scores[parent] + value)
                candidates.sort(key=lambda i: (-pool_scores[i], i))
                frontier = candidates[:k]
        finally:
            self._cache.truncate(committed)
        return select_tree(pool_tokens, pool_parents, pool_scores, shape.nodes)

    def grow_level(self, tree: DraftTree, width: int, top_k: int, pending: FeaturePairs | None = None) -> DraftTree:
        """PipeDec growth: one more level, the ``width`` best children of the deepest nodes."""
        return self.grow(tree, deepest_nodes(tree), width, top_k, pending)

    def grow_best(
        self, tree: DraftTree, leaves: int, width: int, top_k: int, pending: FeaturePairs | None = None
    ) -> DraftTree:
        """Best-first growth: children of the ``leaves`` best-scoring leaves, ``width`` best kept."""
        return self.grow(tree, best_leaves(tree, leaves), width, top_k, pending)

    @torch.no_grad()
    def grow(
        self, tree: DraftTree, frontier: list[int], width: int, top_k: int, pending: FeaturePairs | None = None
    ) -> DraftTree:
        """Append the ``width`` best new children of ``frontier`` nodes (by cumulative score).

        ``pending``: committed pairs not yet in the cache, their last token the tree's root; they are
        appended first. Children the tree already has are not proposed again.
        """
        assert len(tree) >= 1 and frontier
        if pending is not None:
            assert pending.tokens[-1] == tree.tokens[0], "pending pairs end with the root"
            self.extend_context(pending)
        logp, tokens = self._proposals(self._tree_features(tree, frontier), top_k + 1)  # one spare
        existing = set(zip(tree.parents, tree.tokens, strict=True))
        candidates = []
        for f, values, ids in zip(frontier, logp, tokens, strict=True):
            fresh = [(v, t) for v, t in zip(values, ids, strict=True) if (f, t) not in existing][:top_k]
            for value, token in fresh:
                candidates.append((tree.scores[f] + value, len(candidates), token, f))
        candidates.sort(key=lambda c: (-c[0], c[1]))
        best = candidates[:width]
        return tree.appended([c[2] for c in best], [c[3] for c in best], [c[0] for c in best])

    def _tree_features(self, tree: DraftTree, nodes: list[int]) -> Tensor:
        """Predicted features ``[len(nodes), H]`` of tree nodes: their ancestors first, one forward per level."""
        assert self._root_feature is not None, "the head has no context yet"
        needed: set[int] = set()
        for node in nodes:
            while node > 0 and node not in needed:
                needed.add(node)
                node = tree.parents[node]
        depths = tree.depths()
        committed = self._cache.length
        features = {0: self._root_feature}
        cache_row = {0: committed - 1}
        tokens, parents = list(tree.tokens), list(tree.parents)
        try:
            for depth in range(1, max((depths[i] for i in needed), default=0) + 1):
                level = sorted(i for i in needed if depths[i] == depth)
                out = self._rows(level, tokens, parents, features, cache_row, committed, committed - 1 + depth)
                features.update(zip(level, out, strict=True))
        finally:
            self._cache.truncate(committed)
        return torch.stack([features[i] for i in nodes])

    def _rows(
        self,
        nodes: list[int],
        tokens: list[int],
        parents: list[int],
        features: dict[int, Tensor],
        cache_row: dict[int, int],
        committed: int,
        position: int,
    ) -> Tensor:
        """Run one level of tree nodes through the head (rows kept in the cache); their features ``[F, H]``."""
        past = self._cache.length
        n = len(nodes)
        attend = torch.zeros(n, past + n, dtype=torch.bool)
        attend[:, :committed] = True
        for r, node in enumerate(nodes):
            attend[r, past + r] = True
            ancestor = parents[node]
            while ancestor > 0:  # the root's row lies inside the committed pairs
                attend[r, cache_row[ancestor]] = True
                ancestor = parents[ancestor]
            cache_row[node] = past + r
        inputs = torch.stack([features[parents[i]] for i in nodes])
        ids = torch.tensor([tokens[i] for i in nodes], dtype=torch.long)
        return self._head(inputs, ids, torch.full((n,), position, dtype=torch.long), attend, self._cache)

    def _proposals(self, features: Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
        """Top-``k`` log-probabilities and full-vocabulary token ids per feature row."""
        logp = torch.log_softmax(self._head.logits(features), dim=-1)  # [F, draft_vocab]
        top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
        return top.values.tolist(), self._head.full_ids(top.indices).tolist()
