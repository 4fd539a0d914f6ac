"""A flowspec request whose drafter drafted ahead of the verdicts, measured from its trace (pure).

The drafter's decode spans (``draft``, ``send``) and the scheduler's decisions (``schedule``): a run of
``send`` spans is one answer (a report, then its segments); an answer of more than one segment is a
round's fill. Per round: the fill's draft ms (the ``draft`` spans from the decision that ended the
previous round to the fill's sends: the context pass and the fill) and its verdicts (the decisions
until the next fill; the last round's are the rest of ``steps + noops``), each a step or a noop as the
verifier's spans tell (a ``verify`` span with a ``forward`` since the previous one is a step). Every
other ``draft`` span is one level of growth: their mean is a level's ms, and the stage-1 rows the
growths sent, shared over them, a level's rows (what prunes drop before it is sent included). Levels
per growth: the median of the ``tree_levels`` counter, else the draft settings' ``grow_levels``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.observability.trace import SPAN_KINDS
from common.projection.ring import ProjectionError

_FORWARD, _DRAFT, _SEND, _VERIFY, _SCHEDULE = (SPAN_KINDS.index(k) for k in
                                                ("forward", "draft", "send", "verify", "schedule"))
# A bench run's ``drafter_loop`` when the services' loop handles every arrived message between two units of
# its own work (services.runtime); runs recorded without it handled one message per socket per unit.
DRAINING_LOOP = "drain"
_TREE_LEVELS = len(SPAN_KINDS)  # the first of common.observability.trace.COUNTER_KINDS


@dataclass(frozen=True)
class DraftAhead:
    """What a request drafting ahead did: per round its fill ms and its verdicts (True: a step, False: a
    noop); per growth level its drafter ms and the stage-1 rows it sent; the levels a growth drafts."""

    fill_ms: tuple[float, ...]
    steps: tuple[tuple[bool, ...], ...]
    level_ms: float
    levels: int
    level_rows: float
    drains: bool = True  # its loop handled every arrived message between levels (else one per level)


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


def verdict_kinds(stats: Mapping[str, Any], begin: float) -> list[bool]:
    """Per decode verdict of the verifier, in order: whether it was a step (it forwarded rows for it)."""
    kinds, forwarded = [], False
    for _, code, _ in _triples(stats, "verifier", begin):
        if code == _FORWARD:
            forwarded = True
        elif code == _VERIFY:
            kinds.append(forwarded)
            forwarded = False
    return kinds


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
    kinds = verdict_kinds(stats, begin)
    kinds += [True] * (sum(counts) - len(kinds))  # a verdict the trace lacks counts as a step
    steps, first = [], 0
    for count in counts:
        steps.append((*kinds[first : first + count - 1], True))  # a round ends on a step
        first += count
    levels_ms = [dur for start, dur in drafts if not any(a <= start < b for a, b in windows)]
    depth = [value for _, code, value in drafter if code == _TREE_LEVELS]
    return DraftAhead(
        fill_ms=tuple(fill_ms), steps=tuple(steps),
        level_ms=statistics.fmean(levels_ms) if levels_ms else 0.0,
        levels=max(int(statistics.median(depth)) if depth else grow_levels, 1),
        level_rows=growth_rows / max(len(levels_ms), 1),
    )
