"""Tree shapes that fit the moment: how deep and how wide the drafter grows, from measured acceptance.

Every prune tells the drafter how far the base model followed its tree. It keeps moving averages of
three measures (:class:`Acceptance`):

* ``accepted``: draft tokens accepted per verification (the root excluded);
* ``full``: how often the accepted path ran to a leaf (the tree was too shallow there: grow deeper);
* ``miss``: how often the next token was not in the tree (the round ended: grow wider).

A verification consumes ``accepted + 1`` levels of the tree and one growth is sent per verification,
so a growth adds about that many levels, one more while whole paths keep being accepted, and one more
while the tree ahead of the root is shallower than the pipeline holds (``hops`` verifications of
``accepted + 1`` levels each). The width (children kept per level, leaves grown) scales with the miss
rate, from half the configured width when the tree never misses to 1.5x when it always does. A growth
never takes the tree past ``node_cap`` nodes: draft work and every stage's KV rows stay bounded.

On by default (``DraftSettings.adaptive``): the 16-core pinned runs in the README used it. Timeline:
with each growth step the drafter records the counters ``tree_levels`` and ``tree_width``
(:func:`common.observability.trace.counter`); Perfetto draws them as tracks under the drafter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMOOTHING = 0.3  # weight of the newest verification in the moving averages
FULL_DEEPER = 0.5  # above this share of fully accepted paths, grow one level deeper
MAX_LEVELS = 6  # levels per growth: each is one sequential draft forward
MIN_WIDTH = 2


@dataclass(frozen=True)
class Acceptance:
    """Moving averages over the verifications seen so far (a neutral start before any)."""

    accepted: float = 1.0
    full: float = 0.5
    miss: float = 0.5


def observe(acc: Acceptance, accepted: int, full: bool, continued: bool) -> Acceptance:
    """``acc`` after one verification: ``accepted`` draft tokens, ``full``: up to a leaf, ``continued``:
    the next token was in the tree."""
    def mix(old: float, new: float) -> float:
        return (1 - SMOOTHING) * old + SMOOTHING * new

    return Acceptance(mix(acc.accepted, accepted), mix(acc.full, float(full)), mix(acc.miss, float(not continued)))


@dataclass(frozen=True)
class GrowthShape:
    levels: int  # levels (sequential draft forwards) one growth adds
    leaves: int  # best leaves grown per level
    width: int  # new nodes kept per level


def growth_shape(acc: Acceptance, base: GrowthShape, hops: int, depth_ahead: int, tree_nodes: int,
                 node_cap: int) -> GrowthShape | None:
    """The next growth's shape, or None when the tree is at its node cap.

    ``base``: the configured shape; ``depth_ahead``: the deepest level below the root; ``hops``:
    segments the pipeline holds.
    """
    per_step = acc.accepted + 1
    levels = math.ceil(per_step) + (acc.full > FULL_DEEPER) + (depth_ahead < hops * per_step)
    scale = 0.5 + acc.miss
    width = max(MIN_WIDTH, round(base.width * scale))
    leaves = max(1, min(width, round(base.leaves * scale)))
    room = node_cap - tree_nodes
    levels = min(max(levels, 1), MAX_LEVELS, room // width if room >= width else 0)
    if levels < 1:
        if room < 1:
            return None
        return GrowthShape(1, min(leaves, room), room)
    return GrowthShape(levels, leaves, width)
