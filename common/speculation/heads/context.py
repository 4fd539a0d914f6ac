"""The head drafter behind ``TreeDrafter``'s token interface, fed by base features as they arrive.

The drafter service commits tokens (prompt, accepted tokens, next tokens) as ``TreeDrafter`` expects;
the verifier's features arrive separately, keyed by context position. A pair ``(f(t_i), t_{i+1})``
enters the head's cache once both halves are known; drafting from the root (the last committed
token) needs every pair before it, i.e. the features of all committed tokens but the last.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from common.speculation.drafting import TreeShape
from common.speculation.fill import SoloContext, SoloFill
from common.speculation.growth import LevelStep
from common.speculation.heads.drafter import FeaturePairs, HeadTreeDrafter
from common.speculation.heads.model import DraftHead
from common.speculation.tree import DraftTree


class HeadContextDrafter:
    """Committed tokens plus base features in, draft trees out (as ``TreeDrafter`` does)."""

    takes_features = True  # the head drafts from the base model's features (common.speculation.growth.Drafter)

    def __init__(self, drafter: HeadTreeDrafter) -> None:
        self._drafter = drafter
        self._tokens: list[int] = []  # committed tokens
        self._features: dict[int, Tensor] = {}  # context position -> base feature [H], not yet paired

    def reset(self) -> None:
        self._drafter.reset()
        self._tokens = []
        self._features = {}

    def add_features(self, position: int, hidden: Tensor) -> None:
        """Base features ``[n, H]`` of the committed tokens at ``position .. position + n - 1``."""
        for i, row in enumerate(hidden):
            self._features[position + i] = row
        self._flush()

    def has_features(self, context_length: int) -> bool:
        """Whether the features of every committed token but the last (of ``context_length``) are known."""
        return all(i in self._features for i in range(self._drafter.context_length, context_length - 1))

    def extend_context(self, tokens: Sequence[int]) -> None:
        self._tokens.extend(tokens)
        self._flush()

    def draft(self, root: int, shape: TreeShape) -> DraftTree:
        self._check(root)
        return self._drafter.draft(root, shape)

    def fill(self, root: int, shape: TreeShape, pending: Sequence[int] = ()) -> SoloFill:
        """``extend_context(pending)`` then ``draft``, at once: a head's fill shares no forward."""
        return SoloFill(self, root, shape, pending)

    def context_step(self, tokens: Sequence[int]) -> SoloContext:
        return SoloContext(self, tokens)

    def grow_level(self, tree: DraftTree, width: int, top_k: int, pending: Sequence[int] = ()) -> DraftTree:
        self._catch_up(tree, pending)
        return self._drafter.grow_level(tree, width, top_k)

    def grow_best(
        self, tree: DraftTree, leaves: int, width: int, top_k: int, pending: Sequence[int] = ()
    ) -> DraftTree:
        self._catch_up(tree, pending)
        return self._drafter.grow_best(tree, leaves, width, top_k)

    def level_best(
        self, tree: DraftTree, leaves: int, width: int, top_k: int, pending: Sequence[int] = ()
    ) -> LevelStep:
        """``grow_best``'s level, to draft beside other requests' (``common.speculation.growth.grow_many``)."""
        self._catch_up(tree, pending)
        return self._drafter.level_best(tree, leaves, width, top_k)

    def _catch_up(self, tree: DraftTree, pending: Sequence[int]) -> None:
        """Before growing ``tree``: the committed ``pending`` tokens in, and its root where the context ends."""
        self.extend_context(pending)
        self._check(tree.tokens[0])

    def _ready_pairs(self) -> list[int]:
        """Context positions ``i`` whose pair ``(f(t_i), t_{i+1})`` is complete and next in line."""
        ready, i = [], self._drafter.context_length
        while i + 1 < len(self._tokens) and i in self._features:
            ready.append(i)
            i += 1
        return ready

    def _flush(self) -> None:
        ready = self._ready_pairs()
        if ready:
            hidden = torch.stack([self._features.pop(i) for i in ready])
            self._drafter.extend_context(FeaturePairs(hidden, tuple(self._tokens[i + 1] for i in ready)))

    def _check(self, root: int) -> None:
        assert self._tokens and self._tokens[-1] == root, "the root must be the last committed token"
        assert self._drafter.context_length == len(self._tokens) - 1, "drafting before the features arrived"


class HeadDrafters:
    """Per-request head drafters over one shared draft head, each with its own caches; freed ones are reused."""

    KEEP = 4

    def __init__(self, head: DraftHead) -> None:
        self._head = head
        self._free: list[HeadContextDrafter] = []

    def take(self) -> HeadContextDrafter:
        return self._free.pop() if self._free else HeadContextDrafter(HeadTreeDrafter(self._head))

    def give(self, drafter: HeadContextDrafter) -> None:
        drafter.reset()
        if len(self._free) < self.KEEP:
            self._free.append(drafter)
