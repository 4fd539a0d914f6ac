"""One request's state in the drafter (:mod:`services.drafter.core`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from common.speculation import tree_policy
from common.speculation.growth import Drafter
from common.speculation.modes import DraftSettings, Mode
from common.speculation.tree import DraftTree
from common.wire.ordering import PruneLog
from common.wire.ring import Segment


@dataclass
class DraftingRequest:
    """What the drafter holds for one request: its drafter, its tree, its pacing and its statistics."""

    request_id: str
    draft: DraftSettings
    drafter: Drafter  # the shared draft model (or head) over this request's own context cache
    root: int = -1
    pending: list[int] = field(default_factory=list)  # committed tokens not yet in the draft cache
    prompt_left: int = 0  # prompt tokens not yet in the draft cache: taken a chunk per drafting turn
    prefill: deque[Segment] = field(default_factory=deque)  # prompt chunks not yet sent: one per drafting turn
    prefill_chunk: int = 64
    tree: DraftTree | None = None  # None between rounds; nodes past ``sent`` are pre-drafted
    mode: Mode = Mode.FLOWSPEC
    context_length: int = 0  # prompt and output tokens, the root included
    log: PruneLog = field(default_factory=PruneLog)
    seq: int = 0
    idle_expands: int = 0  # Expands since the last prune: grow the draft to find new nodes
    busy_s: float = 0.0  # drafting time: expansions and context passes
    unreported_s: float = 0.0  # drafting time not yet in a DraftReport
    expansions: int = 0
    nodes: int = 0  # tree nodes sent
    credits: int = 0  # segments it may send now
    fill_due: bool = False  # a credit started a new round: its fill is drafted at the next batch, beside others'
    sent: int = 0  # nodes of ``tree`` already in the ring
    shape: tree_policy.GrowthShape | None = None  # the growth under way; None: the tree is at its cap
    levels_grown: int = 0  # levels of that growth drafted so far
    acceptance: tree_policy.Acceptance = field(default_factory=tree_policy.Acceptance)

    @property
    def continuous(self) -> bool:
        """Whether it drafts ahead of the verdicts (flowspec, best-leaf growth)."""
        return self.mode.drafts_ahead(self.draft)
