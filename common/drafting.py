"""Building draft trees with a draft model (EAGLE-2 style top-k expansion, score-ordered output).

The draft model keeps a KV cache over the committed context (prompt and every output token, the
current root included). A draft grows level by level from the root: the ``top_k`` best children of
every frontier node are candidates with cumulative log-probability scores; the ``top_k`` best
candidates form the next frontier. The ``nodes`` best candidates overall, ancestor-closed, ordered by
score (ties by creation order) form the tree, so parents precede children and the likeliest nodes
are streamed first. The draft is deterministic; sampling happens only at verification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from common.modeling import KVCache, ModelSlice, causal_attend
from common.modeling.cache_pool import CachePool
from common.tree import DraftTree


@dataclass(frozen=True)
class TreeShape:
    nodes: int  # draft nodes below the root
    depth: int  # levels below the root
    top_k: int


class TreeDrafter:
    """A draft model with one request's context cache; ``draft`` never changes the committed context.

    Several requests share the model, each through its own TreeDrafter over its own cache.
    """

    def __init__(self, model: ModelSlice, cache: KVCache | None = None) -> None:
        assert model.with_embedding and model.with_head, "the draft model must be whole"
        self._model = model
        self._cache: KVCache = cache if cache is not None else model.new_cache()
        self._root_logits: torch.Tensor | None = None  # [vocab] at the last committed token

    @property
    def model(self) -> ModelSlice:
        return self._model

    @property
    def cache(self) -> KVCache:
        return self._cache

    @property
    def context_length(self) -> int:
        return self._cache.length

    def reset(self) -> None:
        self._cache.reset()
        self._root_logits = None

    @torch.no_grad()
    def extend_context(self, tokens: Sequence[int], chunk: int = 64) -> None:
        """Append committed tokens to the draft cache (prefill and accepted tokens)."""
        for start in range(0, len(tokens), chunk):
            ids = torch.tensor(tokens[start : start + chunk], dtype=torch.long)
            past = self._cache.length
            positions = torch.arange(past, past + len(ids))
            hidden = self._model(ids, positions, causal_attend(past, len(ids)), self._cache)
            self._root_logits = self._model.logits(hidden[-1:])[0]

    @torch.no_grad()
    def draft(self, root: int, shape: TreeShape) -> DraftTree:
        """A tree rooted at ``root``, which must be the last token of the committed context."""
        assert self._root_logits is not None and shape.nodes >= 1 and shape.depth >= 1 and shape.top_k >= 1
        committed = self._cache.length
        root_pos = committed - 1
        k = shape.top_k
        # Candidate pool: creation order breaks score ties, so a parent always sorts before its child.
        pool_tokens, pool_parents, pool_scores = [root], [-1], [0.0]
        cache_row = {0: root_pos}  # pool index -> draft cache row, for expanded nodes
        logp = torch.log_softmax(self._root_logits.float(), dim=-1)
        top = torch.topk(logp, min(k, logp.numel()))
        frontier = []
        for score, token in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            frontier.append(len(pool_tokens))
            pool_tokens.append(token)
            pool_parents.append(0)
            pool_scores.append(score)
        try:
            for level in range(1, shape.depth):
                logp = self._expand(frontier, pool_parents, cache_row, committed, root_pos + level, pool_tokens)
                top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)  # [F, k]
                candidates = []
                for f, (values, tokens) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
                    parent = frontier[f]
                    for value, token in zip(values, tokens, strict=True):
                        candidates.append(len(pool_tokens))
                        pool_tokens.append(token)
                        pool_parents.append(parent)
                        pool_scores.append(pool_scores[parent] + value)
                candidates.sort(key=lambda i: (-pool_scores[i], i))
                frontier = candidates[:k]
        finally:
            self._cache.truncate(committed)
        return select_tree(pool_tokens, pool_parents, pool_scores, shape.nodes)

    def grow_level(self, tree: DraftTree, width: int, top_k: int, pending: Sequence[int] = ()) -> DraftTree:
        """PipeDec growth: one more level, the ``width`` best children of the deepest nodes."""
        return self.grow(tree, deepest_nodes(tree), width, top_k, pending)

    def grow_best(
        self, tree: DraftTree, leaves: int, width: int, top_k: int, pending: Sequence[int] = ()
    ) -> DraftTree:
        """Best-first growth: children of the ``leaves`` best-scoring leaves, ``width`` best kept.

        One draft forward per step instead of a re-draft of ``depth`` sequential forwards: what a
        draft model that is not a one-layer EAGLE head can afford on every pipeline step.
        """
        return self.grow(tree, best_leaves(tree, leaves), width, top_k, pending)

    @torch.no_grad()
    def grow(
        self, tree: DraftTree, frontier: list[int], width: int, top_k: int, pending: Sequence[int] = ()
    ) -> DraftTree:
        """Append the ``width`` best new children of ``frontier`` nodes (by cumulative score).

        ``pending``: committed tokens not yet in the draft cache, ending with the tree's root; they
        ride in the same forward as the tree nodes, so a step costs one draft forward in all.
        Children the tree already has are not proposed again.
        """
        assert len(tree) >= 1 and frontier
        assert not pending or pending[-1] == tree.tokens[0], "pending tokens end with the root"
        logp = torch.log_softmax(self._tree_logits(tree, frontier, pending), dim=-1)  # [F, vocab]
        top = torch.topk(logp, min(top_k + 1, logp.shape[-1]), dim=-1)  # one spare for a known child
        existing = {(p, t) for p, t in zip(tree.parents, tree.tokens, strict=True)}
        candidates = []
        for f, values, tokens in zip(frontier, top.values.tolist(), top.indices.tolist(), strict=True):
            fresh = [(v, t) for v, t in zip(values, tokens, strict=True) if (f, t) not in existing][:top_k]
            for value, token in fresh:
                candidates.append((tree.scores[f] + value, len(candidates), token, f))
        candidates.sort(key=lambda c: (-c[0], c[1]))
        best = candidates[:width]
        return tree.appended([c[2] for c in best], [c[3] for c in best], [c[0] for c in best])

    def _tree_logits(self, tree: DraftTree, nodes: list[int], pending: Sequence[int]) -> torch.Tensor:
        """Draft logits [len(nodes), vocab] at tree nodes (the root's: at the last committed token).

        One forward: the pending committed tokens (causal, kept in the cache), then the asked nodes
        and their ancestors (tree mask, dropped from the cache afterwards).
        """
        needed: set[int] = set()
        for node in nodes:
            while node > 0 and node not in needed:
                needed.add(node)
                node = tree.parents[node]
        order = sorted(needed)  # parents first
        past, p = self._cache.length, len(pending)
        committed = past + p
        rows_logits: dict[int, torch.Tensor] = {}
        if order or p:
            n = p + len(order)
            attend = torch.zeros(n, past + n, dtype=torch.bool)
            attend[:p, :past] = True
            attend[:p, past:committed] = torch.ones(p, p, dtype=torch.bool).tril()
            attend[p:, :committed] = True
            row = {0: committed - 1} | {node: committed + k for k, node in enumerate(order)}
            depths = tree.depths()
            for k, node in enumerate(order):
                while node > 0:
                    attend[p + k, row[node]] = True
                    node = tree.parents[node]
            ids = torch.tensor([*pending, *(tree.tokens[i] for i in order)], dtype=torch.long)
            positions = torch.tensor([*range(past, committed), *(committed - 1 + depths[i] for i in order)])
            try:
                hidden = self._model(ids, positions, attend, self._cache)  # [n, H]
                wanted = [i for i in nodes if i > 0]
                picks = ([p - 1] if p else []) + [p + order.index(i) for i in wanted]
                logits = self._model.logits(hidden[picks]) if picks else None
                if p:
                    self._root_logits = logits[0]
                rows_logits = dict(zip(wanted, logits[1 if p else 0 :], strict=True)) if wanted else {}
            finally:
                if self._cache.length > committed:
                    self._cache.truncate(committed)
        assert self._root_logits is not None, "the draft model has no context yet"
        return torch.stack([self._root_logits.float() if i == 0 else rows_logits[i] for i in nodes])

    def _expand(
        self,
        frontier: list[int],
        parents: list[int],
        cache_row: dict[int, int],
        committed: int,
        position: int,
        tokens: list[int],
    ) -> torch.Tensor:
        """Run the frontier through the draft model; returns log-probabilities [F, vocab]."""
        past = self._cache.length
        n = len(frontier)
        attend = torch.zeros(n, past + n, dtype=torch.bool)
        attend[:, :committed] = True
        for r, node in enumerate(frontier):
            attend[r, past + r] = True
            ancestor = parents[node]
            while ancestor > 0:  # the root's row lies inside the committed context
                attend[r, cache_row[ancestor]] = True
                ancestor = parents[ancestor]
            cache_row[node] = past + r
        ids = torch.tensor([tokens[i] for i in frontier], dtype=torch.long)
        positions = torch.full((n,), position, dtype=torch.long)
        hidden = self._model(ids, positions, attend, self._cache)
        return torch.log_softmax(self._model.logits(hidden), dim=-1)


class ModelDrafters:
    """Per-request TreeDrafters over one shared draft model; their context caches are pooled."""

    def __init__(self, model: ModelSlice) -> None:
        self._model = model
        self._caches = CachePool(model.new_cache)

    def take(self) -> TreeDrafter:
        return TreeDrafter(self._model, self._caches.take())

    def give(self, drafter: TreeDrafter) -> None:
        self._caches.give(drafter.cache)


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


def deepest_nodes(tree: DraftTree) -> list[int]:
    depths = tree.depths()
    deepest = max(depths)
    return [i for i, d in enumerate(depths) if d == deepest]


def best_leaves(tree: DraftTree, count: int) -> list[int]:
    has_child = set(tree.parents)
    leaves = [i for i in range(len(tree)) if i not in has_child]
    return sorted(leaves, key=lambda i: (-tree.scores[i], i))[:count]
