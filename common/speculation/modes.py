"""Decoding modes, their traits, and the draft tree settings every mode reads."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    """Decoding modes on one cluster; on the wire a mode is its value (a string).

    ``ar``: pipelined autoregressive, no draft. ``chunk``: one draft tree per round, streamed in chunks and
    verified whole (Chunk-PP). ``pipedec``: the tree grows one level per step, verified and pruned step by
    step (PipeDec). ``flowspec``: score-ordered segments, step-wise verification, pruning and expansion
    (FlowSpec). The cores ask a mode's traits below, never compare its name.
    """

    AR = "ar"
    CHUNK = "chunk"
    PIPEDEC = "pipedec"
    FLOWSPEC = "flowspec"

    @property
    def drafts(self) -> bool:
        """Whether it drafts a tree at all (ar sends the root alone, so its drafter needs no context)."""
        return self is not Mode.AR

    @property
    def continues_round(self) -> bool:
        """Whether a verdict keeps the next token's subtree and the round goes on (else every verdict ends it)."""
        return self in (Mode.FLOWSPEC, Mode.PIPEDEC)

    @property
    def verifies_whole_tree(self) -> bool:
        """Whether the verifier gathers a round's segments and verifies the tree at once (Chunk-PP)."""
        return self is Mode.CHUNK

    @property
    def grows_by_level(self) -> bool:
        """Whether the tree grows one level per segment (PipeDec) rather than by score."""
        return self is Mode.PIPEDEC

    def drafts_ahead(self, draft: DraftSettings) -> bool:
        """Whether it drafts ahead of the verdicts (flowspec with best-leaf growth) instead of on a credit."""
        return self is Mode.FLOWSPEC and draft.expansion == "grow"


MODES = tuple(m.value for m in Mode)  # the names, for help texts and validation


@dataclass(frozen=True)
class DraftSettings:
    """Tree shape: the fill tree of a new round and each expansion."""

    top_k: int = 4
    fill_nodes: int = 24
    fill_depth: int = 5
    fill_segments: int = 0  # 0: one per pipeline hop (stages + verifier)
    segment_cap: int = 16
    expand_nodes: int = 12
    expand_depth: int = 4
    pipedec_width: int = 8  # nodes per tree level in pipedec mode
    expansion: str = "grow"  # flowspec: "grow" (best leaves, one draft forward) or "redraft" (from the root)
    expand_leaves: int = 4  # "grow": leaves expanded per level
    grow_levels: int = 3  # "grow": levels added per step, one draft forward each (best of 1-3 measured)
    adaptive: bool = True  # "grow": levels and width follow the measured acceptance (common.speculation.tree_policy)
    node_cap: int = 128  # "grow": the most nodes a tree holds (pre-drafting stops there)
