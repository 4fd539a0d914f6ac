"""Building draft trees with a draft model (EAGLE-2 style top-k expansion, score-ordered output).

The draft model keeps a KV cache over the committed context (prompt and every output token, the
current root included) followed by the rows of expanded tree nodes (``common.speculation.draft_rows``): a growth
forwards only the nodes that lack a row, and committing accepted tokens turns their rows into context
by compaction. A draft grows level by level from the root: the ``top_k`` best children of every
frontier node are candidates with cumulative log-probability scores; the ``top_k`` best candidates
form the next frontier. The ``nodes`` best candidates overall, ancestor-closed, ordered by score (ties
by creation order) form the tree, so parents precede children and the likeliest nodes are streamed
first. With a reduced draft vocabulary (``common.speculation.draft_vocab``) only its tokens are proposed.

The draft is deterministic (top-k): verification needs no draft probabilities, at any temperature
(``common.speculation.verification``), so a reduced vocabulary changes which tokens are proposed, never the output
distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from common.models.modeling import KVCache, ModelSlice
from common.models.modeling.batch import Rows, forward_many
from common.models.modeling.cache_pool import CachePool
from common.speculation.draft_rows import Path, TreeRows
from common.speculation.draft_vocab import DraftLogits
from common.speculation.fill import ModelContext, ModelFill
from common.speculation.growth import (
    FrontierGrowth,
    LevelStep,
    TreeShape,
    best_children,
    grow_many,
    tree_paths,
)
from common.speculation.tree import DraftTree


class TreeDrafter(FrontierGrowth):
    """A draft model with one request's cache; ``draft`` and ``grow`` never change the committed context.

    Several requests share the model, each through its own TreeDrafter over its own cache.
    ``keep_tree_rows=False`` drops the tree rows after every draft or growth, so each growth
    re-forwards its nodes' ancestors and committed tokens are forwarded again (the cost without kept rows).
    """

    def __init__(
        self, model: ModelSlice, cache: KVCache | None = None, *, logits: DraftLogits | None = None,
        keep_tree_rows: bool = True, calls: DraftModelCalls | None = None,
    ) -> None:
        assert model.with_embedding and model.with_head, "the draft model must be whole"
        self._model = model
        self._calls = calls or DraftModelCalls(model, logits or DraftLogits(model))
        self._cache: KVCache = cache if cache is not None else model.new_cache()
        self._rows = TreeRows(self._cache)
        self._keep = keep_tree_rows
        self._root_hidden: Tensor | None = None  # [H] at the last committed token
        self.rows_forwarded = 0  # rows run through the draft model, committed tokens and tree nodes

    takes_features = False  # a draft model reads its own hidden states (common.speculation.growth.Drafter)

    def has_features(self, context_length: int) -> bool:
        return True

    def add_features(self, position: int, hidden: Tensor) -> None:
        raise TypeError("a draft model takes no base features")

    @property
    def model(self) -> ModelSlice:
        return self._model

    @property
    def cache(self) -> KVCache:
        return self._cache

    @property
    def context_length(self) -> int:
        """Committed tokens in the draft cache (tree rows excluded)."""
        return self._rows.committed

    @property
    def tree_rows(self) -> int:
        """Tree nodes whose rows the draft cache holds after the committed context."""
        return len(self._rows)

    def reset(self) -> None:
        self._cache.reset()
        self._rows.reset()
        self._root_hidden = None

    @torch.no_grad()
    def extend_context(self, tokens: Sequence[int], chunk: int = 64) -> None:
        """Commit tokens (prefill and accepted tokens): cached tree rows are adopted, the rest forwarded."""
        rest = self._commit(tokens)
        for start in range(0, len(rest), chunk):
            self._forward(rest[start : start + chunk], [])

    @torch.no_grad()
    def draft(self, root: int, shape: TreeShape) -> DraftTree:
        """A tree rooted at ``root``, which must be the last token of the committed context: its fill's levels,
        drafted alone (the one best-first growth, ``common.speculation.fill.ModelFill``)."""
        assert self._root_hidden is not None
        fill = self.fill(root, shape)
        while (step := fill.level()) is not None:
            grow_many(self.shared, [step])
        return fill.tree

    def fill(self, root: int, shape: TreeShape, pending: Sequence[int] = ()) -> ModelFill:
        """``extend_context(pending)`` then ``draft(root, shape)`` a level at a time, beside other requests'
        (``common.speculation.fill``)."""
        return ModelFill(self, root, shape, pending)

    def context_step(self, tokens: Sequence[int]) -> ModelContext:
        """``extend_context(tokens)`` as parts of shared forwards (``common.speculation.fill.extend_many``)."""
        return ModelContext(self, tokens)

    @property
    def shared(self) -> DraftModelCalls:
        """The draft model's calls, shared by every request's drafter of one ``ModelDrafters``."""
        return self._calls

    def level(
        self, tree: DraftTree, frontier: list[int], width: int, top_k: int, pending: Sequence[int] = ()
    ) -> LevelStep:
        """The ``width`` best new children of ``frontier`` nodes, to draft alone (``grow``) or beside others'.

        ``pending``: committed tokens not yet in the draft cache, ending with the tree's root; they are
        committed first (cached rows adopted) and the rest ride in the same forward as the new tree
        rows, so a step costs one draft forward in all. Children the tree already has are not proposed again.
        """
        assert len(tree) >= 1 and frontier
        assert not pending or pending[-1] == tree.tokens[0], "pending tokens end with the root"
        return _ModelLevel(self, tree, frontier, width, top_k, self._commit(pending))

    def _commit(self, tokens: Sequence[int]) -> list[int]:
        """Adopt the cached rows of the path ``tokens`` starts with; returns the tokens still to forward."""
        adopted, hidden = self._rows.commit(tokens)
        if hidden is not None:
            self._root_hidden = hidden
        return list(tokens[adopted:])

    def _forward(self, pending: Sequence[int], paths: list[Path]) -> None:
        """At most one forward: the pending committed tokens, then the rows ``paths`` and their ancestors lack."""
        planned = self._plan(pending, paths)
        if planned is not None:
            rows, new = planned
            self._absorb(len(pending), new, self._model(rows.inputs, rows.positions, rows.attend, rows.cache))

    def _plan(self, pending: Sequence[int], paths: list[Path]) -> tuple[Rows, list[Path]] | None:
        """The rows of one forward (None: nothing to forward): the pending committed tokens (causal, they join
        the context), then the rows that ``paths`` and their ancestors lack (tree mask, kept in the tree region).
        The new rows join the tree mask now: ``_absorb`` must follow with their hidden states."""
        new = self._rows.missing(paths)
        p, n, t = len(pending), len(new), len(self._rows)
        if not (p or n):
            return None
        assert not (p and t), "committed tokens cannot follow kept tree rows"
        past = self._rows.committed
        attend = torch.zeros(p + n, past + p + t + n, dtype=torch.bool)
        attend[:p, :past] = True
        attend[:p, past : past + p] = torch.ones(p, p, dtype=torch.bool).tril()
        attend[p:, : past + p] = True
        if n:
            attend[p:, past + p :] = self._rows.tree_attend(new)
        root_position = past + p - 1
        positions = torch.tensor([*range(past, past + p), *(root_position + len(q) for q in new)])
        ids = torch.tensor([*pending, *(q[-1] for q in new)], dtype=torch.long)
        return Rows(ids, positions, attend, self._cache), new

    def _absorb(self, p: int, new: list[Path], hidden: Tensor) -> None:
        """The hidden states ``[p + n, H]`` of a planned forward: ``p`` committed tokens, then ``new`` tree rows."""
        self.rows_forwarded += p + len(new)
        if p:
            self._rows.committed += p
            self._root_hidden = hidden[p - 1]
        self._rows.add(new, hidden[p:])

    def _hidden(self, paths: list[Path]) -> Tensor:
        """Final hidden states ``[len(paths), H]`` at tree nodes with rows (the root's path: ``()``)."""
        assert self._root_hidden is not None, "the draft model has no context yet"
        return torch.stack([self._root_hidden if not q else self._rows.hidden(q) for q in paths])

    def _end_step(self) -> None:
        if not self._keep:
            self._rows.drop()


class ModelDrafters:
    """Per-request TreeDrafters over one shared draft model; their context caches are pooled."""

    def __init__(self, model: ModelSlice, draft_ids: Tensor | None = None) -> None:
        """``draft_ids``: a reduced draft vocabulary, the only tokens proposed (None: every token)."""
        self._model = model
        self._calls = DraftModelCalls(model, DraftLogits(model, draft_ids))
        self._caches = CachePool(model.new_cache)

    def take(self) -> TreeDrafter:
        return TreeDrafter(self._model, self._caches.take(), calls=self._calls)

    def give(self, drafter: TreeDrafter) -> None:
        self._caches.give(drafter.cache)


class DraftModelCalls:
    """The draft model's shared forward (``fused``: its own numerics may vary with the rows beside it) and logits."""

    def __init__(self, model: ModelSlice, logits: DraftLogits) -> None:
        self._model, self._logits = model, logits

    def forward_many(self, parts: list[Rows]) -> list[Tensor]:
        return forward_many(self._model, parts, fused=True)

    def logits(self, hidden: Tensor) -> Tensor:
        return self._logits(hidden)

    def token_ids(self, rows: Tensor) -> list[list[int]]:
        return self._logits.token_ids(rows)


class _ModelLevel:
    """A ``LevelStep`` of the draft model: one part (pending tokens and missing frontier rows), then proposals."""

    def __init__(self, drafter: TreeDrafter, tree: DraftTree, frontier: list[int], width: int, top_k: int,
                 pending: list[int]) -> None:
        self.shared, self.top_k = drafter.shared, top_k
        self._drafter, self._tree, self._frontier, self._width = drafter, tree, frontier, width
        self._pending: list[int] | None = pending  # None once planned
        paths = tree_paths(tree)
        self._wanted = [paths[f] for f in frontier]
        self._new: list[Path] = []

    def rows(self) -> Rows | None:
        if self._pending is None:
            return None
        planned = self._drafter._plan(self._pending, self._wanted)
        if planned is None:
            self._pending = None
            return None
        rows, self._new = planned
        return rows

    def take(self, hidden: Tensor) -> None:
        assert self._pending is not None, "a part was planned"
        self._drafter._absorb(len(self._pending), self._new, hidden)
        self._pending = None

    def frontier_hidden(self) -> Tensor:
        return self._drafter._hidden(self._wanted)

    def finish(self, values: list[list[float]], tokens: list[list[int]]) -> DraftTree:
        self._drafter._end_step()
        return best_children(self._tree, self._frontier, values, tokens, self._width, self.top_k)
