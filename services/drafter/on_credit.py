"""Drafting on a credit: what the modes that do not draft ahead (chunk, pipedec, flowspec "redraft") draft
when a credit arrives, for one request at a time. (flowspec "grow" drafts between messages instead, every
request's drafting in shared forwards: :mod:`services.drafter.shared`.)"""

from __future__ import annotations

from common.speculation.drafting import TreeShape
from common.speculation.tree import DraftTree, merge_trees, segment_sizes, single_root
from services.drafter.request import DraftingRequest

MAX_GROWTH = 2  # an idle expansion drafts up to 3x the nodes, deeper, to find nodes the tree lacks


def extend_context(req: DraftingRequest) -> None:
    """Every pending token into the draft cache."""
    if req.pending and req.mode.drafts:
        req.drafter.extend_context(req.pending)
        req.pending, req.prompt_left = [], 0


def fill(req: DraftingRequest, nodes: int, count: int) -> tuple[DraftTree, list[int]]:
    """A new round's tree of ``nodes`` draft nodes (the budget's; pipedec: ``count`` levels) and its segment
    sizes: one segment per pipeline hop (``count``)."""
    settings = req.draft
    extend_context(req)
    if req.mode.grows_by_level:  # one tree level per segment, the root riding with the first
        tree, sizes = single_root(req.root), []
        for _ in range(count):
            before = len(tree)
            tree = req.drafter.grow_level(tree, settings.pipedec_width, settings.top_k)
            sizes.append(len(tree) - before + (1 if before == 1 else 0))
        return tree, sizes
    tree = req.drafter.draft(req.root, TreeShape(nodes, settings.fill_depth, settings.top_k))
    return tree, segment_sizes(len(tree), count, settings.segment_cap)


def grow(req: DraftingRequest) -> DraftTree:
    """The running round's tree after one expansion (nodes appended at the end).

    pipedec adds one level; flowspec "redraft" merges in a fresh draft from the root. (chunk and ar end their
    round at every verdict, so never grow.)
    """
    assert req.tree is not None, "an expansion grows a round's tree"
    settings = req.draft
    if req.mode.grows_by_level:
        pending, req.pending = req.pending, []  # they ride in the growth's one draft forward
        return req.drafter.grow_level(req.tree, settings.pipedec_width, settings.top_k, pending)
    scale = 1 + min(req.idle_expands, MAX_GROWTH)  # idle expansions draft more to find new nodes
    req.idle_expands += 1
    extend_context(req)
    shape = TreeShape(settings.expand_nodes * scale, settings.expand_depth + scale - 1, settings.top_k)
    merged, _ = merge_trees(req.tree, req.drafter.draft(req.root, shape))
    return merged
