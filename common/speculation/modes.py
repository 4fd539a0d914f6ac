"""Decoding modes and the draft tree settings every mode reads."""

from __future__ import annotations

from dataclasses import dataclass


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


MODES = ("ar", "chunk", "pipedec", "flowspec")


"""Decoding modes on one cluster. ``ar``: pipelined autoregressive, no draft. ``chunk``: one draft
tree per round, streamed in chunks and verified whole (Chunk-PP). ``pipedec``: the tree grows one
level per step, verified and pruned step by step (PipeDec). ``flowspec``: score-ordered segments,
step-wise verification, pruning and re-drafted expansion (FlowSpec)."""
