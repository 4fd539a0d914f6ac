"""A flowspec request whose drafter drafted ahead of the verdicts, measured from its trace (pure).

The drafter's decode spans (``draft``, ``send``) and the scheduler's decisions (``schedule``): a run of
``send`` spans is one answer (a report, then its segments); an answer of more than one segment is a
round's fill. Per round: the fill's draft ms (the ``draft`` spans from the decision that ended the
previous round to the fill's sends: the context pass and the fill) and its verdicts (the decisions
until the next fill; the last round's are the rest of ``steps + noops``). Every other ``draft`` span
is one level of growth. Prunes drop part of what is drafted ahead before it is sent: the share kept is
the stage-1 rows the growths sent over the nodes the levels drafted (the ``tree_width`` counter, one
sample per level; all kept without it). A kept level costs the mean level ms over that share and sends
the growths' stage-1 rows shared over the kept levels. Levels per growth: the median of the
``tree_levels`` counter, else the draft settings' ``grow_levels``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.observability.trace import SPAN_KINDS
from common.projection import ProjectionError

_DRAFT, _SEND, _SCHEDULE = (SPAN_KINDS.index(k) for k in ("draft", "send", "schedule"))
_TREE_LEVELS, _TREE_WIDTH = len(SPAN_KINDS), len(SPAN_KINDS) + 1  # common.observability.trace.COUNTER_KINDS


@dataclass(frozen=True)
class DraftAhead:
    """What a request drafting ahead did: per round its fill ms and verdicts; per kept growth level
    (one that survived the prunes) its drafter ms and the stage-1 rows it sent; the levels a growth drafts."""

    fill_ms: tuple[float, ...]
    verdicts: tuple[int, ...]
    level_ms: float
    levels: int
    level_rows: float


def _triples(stats: Mapping[str, Any], service: str, begin: float) -> list[tuple[float, int, float]]:
    """(start ms, code, duration ms or counter value) of a service's decode trace, by start."""
    flat = (stats.get("trace") or {}).get(service) or []
    out = [(start / 1e3, code, dur) for code, start, dur in zip(flat[0::3], flat[1::3], flat[2::3], strict=True)]
    return sorted(t for t in out if t[0] >= begin)


def _fills(drafter: Sequence[tuple[float, int, float]]) -> list[float]:
    """Start times of the answers of more than one segment (a report and two or more segments)."""
    fills, run_start, sends = [], 0.0, 0
    for start, code, _ in [*drafter, (float("inf"), _DRAFT, 0.0)]:
        if code == _SEND:
            run_start, sends = (start if not sends else run_start), sends + 1
        elif code == _DRAFT:
            if sends > 2:
                fills.append(run_start)
            sends = 0
    return fills


def draft_ahead(stats: Mapping[str, Any], begin: float, verdicts: int, growth_rows: float,
                grow_levels: int) -> DraftAhead:
    """The request's drafting ahead (see the module docstring); ``growth_rows``: its stage-1 rows not in fills."""
    drafter = _triples(stats, "drafter", begin)
    drafts = [(start, dur / 1e3) for start, code, dur in drafter if code == _DRAFT]
    decisions = [start for start, code, _ in _triples(stats, "scheduler", begin) if code == _SCHEDULE][1:]
    fills = _fills(drafter)
    if not fills:
        raise ProjectionError(f"request {stats.get('request_id', '?')}: its drafter sent no fill")
    windows = [(max([begin, *(d for d in decisions if d < sent)]), sent) for sent in fills]  # round end -> fill
    fill_ms = [sum(dur for start, dur in drafts if a <= start < b) for a, b in windows]
    ends = [*fills[1:], float("inf")]
    counts = [max(sum(1 for d in decisions if sent < d < upto), 1) for sent, upto in zip(fills, ends, strict=True)]
    counts[-1] = max(verdicts - sum(counts[:-1]), 1)
    levels_ms = [dur for start, dur in drafts if not any(a <= start < b for a, b in windows)]
    depth = [value for _, code, value in drafter if code == _TREE_LEVELS]
    drafted = sum(value for _, code, value in drafter if code == _TREE_WIDTH)
    kept = min(growth_rows / drafted, 1.0) if drafted and growth_rows else 1.0
    return DraftAhead(
        fill_ms=tuple(fill_ms), verdicts=tuple(counts),
        level_ms=statistics.fmean(levels_ms) / kept if levels_ms else 0.0,
        levels=max(int(statistics.median(depth)) if depth else grow_levels, 1),
        level_rows=growth_rows / max(len(levels_ms) * kept, 1.0),
    )
