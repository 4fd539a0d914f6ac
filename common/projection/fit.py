"""What the ring model (:mod:`common.projection.ring`) needs, measured from one ``flowring bench --json`` run.

The run must carry its trace (``bench --trace``): each request's ``stats.trace`` holds every service's
spans as flat (kind, start us, duration us) triples. Decode begins at the scheduler's first ``schedule``
span (its decision on the prefill's verdict); a span counts as decode when it starts there or later.
Nothing here is fitted to any other run.

- Forward costs: a stage forward of ``rows`` rows costs ``layers x (per_forward_ms + per_row_ms x rows)``,
  the verifier's ``per_forward_ms + per_row_ms x rows``. Samples: per (request, service) its decode
  forwards (the ``forward`` spans), decode rows (the service's rows less the prompt's) and summed
  forward ms. The cost per row is one least-squares fit over every sample of the run; the cost per
  forward is then each mode's own (its services overlap more or less, and share the host's memory
  bandwidth). One run has one split of the layers, so a cost per forward that does not grow with the
  layers cannot be told apart: it is charged per layer.
- Hops: in the run's ``ar`` steps, where one thing happens at a time, the medians of the gaps from a
  forward's end to the next station's forward start (``forward_ms``), from the drafter's draft to stage
  1's forward (``segment_ms``), from the verifier's forward to the scheduler's decision
  (``verdict_ms``) and from the decision to the drafter's draft (``expand_ms``).
- Per request (its behaviour): steps, noop verdicts, rounds, per service the decode forwards and rows,
  and the drafter's answer to every Expand (:func:`expansions`): how many segments it sent (a fill one
  per hop, a growth one) and its ``draft`` ms.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.observability.trace import SPAN_KINDS
from common.projection.ahead import DRAINING_LOOP, DraftAhead, draft_ahead
from common.projection.ring import PROJECTED_MODES, ForwardCost, ProjectionError
from common.speculation.tree import segment_sizes

VERIFIER = "verifier"
DRAFTER = "drafter"
SCHEDULER = "scheduler"
_FORWARD, _DRAFT, _SEND, _SCHEDULE = (SPAN_KINDS.index(k) for k in ("forward", "draft", "send", "schedule"))

Span = tuple[float, float]  # start, end (ms)


@dataclass(frozen=True)
class Hops:
    """Median software delays (ms) of the run's hops, from its ar steps (see the module docstring)."""

    forward_ms: float
    segment_ms: float
    verdict_ms: float
    expand_ms: float


@dataclass(frozen=True)
class ModeForwards:
    """Forward costs as one mode's requests measured them: a stage's per layer, the verifier's."""

    layer: ForwardCost
    head: ForwardCost


@dataclass(frozen=True)
class Costs:
    """The run's measured costs (ms, on its own machine)."""

    layers: int  # of the base model, over all stages
    forwards: Mapping[str, ModeForwards]  # by mode
    hops: Hops
    fill_nodes: int  # a round's tree, root included
    segment_cap: int
    fill_segments: int  # a fill's segments; 0: one per hop of the ring

    def fill_sizes(self, nodes: int, stages: int) -> list[int]:
        """A tree of ``nodes`` cut as the drafter cuts a fill on ``stages`` stages (plus the verifier's hop)."""
        return segment_sizes(nodes, self.fill_segments or stages + 1, self.segment_cap)


@dataclass(frozen=True)
class Expansion:
    """The drafter's answer to one Expand: the segments it sent and its draft ms since the last answer
    (a fill sends one segment per hop, a growth one)."""

    segments: int
    draft_ms: float


@dataclass(frozen=True)
class Behaviour:
    """One measured request: its decode work and acceptance (stage and verifier figures are decode totals)."""

    mode: str
    new_tokens: int
    steps: int
    noops: int
    rounds: int
    expansions: tuple[Expansion, ...]  # the drafter's answers to the decode Expands, in order
    stage_rows: tuple[int, ...]  # per stage in ring order
    verifier_rows: int
    ahead: DraftAhead | None = None  # a flowspec request whose drafter drafted ahead of the verdicts

    @property
    def verdicts(self) -> int:
        return self.steps + self.noops

    @property
    def draft_ms(self) -> float:
        return sum(e.draft_ms for e in self.expansions)


@dataclass(frozen=True)
class RunFit:
    """A run's measured costs, its requests, and the decode tokens/s it printed per mode."""

    stages: int
    costs: Costs
    requests: tuple[Behaviour, ...]
    measured: Mapping[str, float]


# ------------------------------------------------------------------------------------------------ spans
def _spans(stats: Mapping[str, Any], service: str, kind: int, after: float = 0.0) -> list[Span]:
    flat = (stats.get("trace") or {}).get(service) or []
    out = [(start / 1e3, (start + dur) / 1e3) for code, start, dur in zip(flat[0::3], flat[1::3], flat[2::3],
                                                                         strict=True) if code == kind]
    return sorted(s for s in out if s[0] >= after)


def decode_start(stats: Mapping[str, Any]) -> float:
    """When decode began (ms): the scheduler's first decision, on the prefill's verdict."""
    decisions = _spans(stats, SCHEDULER, _SCHEDULE)
    if not decisions:
        raise ProjectionError("the run has no trace (run bench with --trace): forwards and hops are read from it")
    return decisions[0][0]


def _stage_names(run: Mapping[str, Any]) -> list[tuple[str, int]]:
    names = [(s["name"], s["layers"][1] - s["layers"][0]) for s in run["cluster"]["stages"]]
    if not names:
        raise ProjectionError("the run's cluster has no stages")
    return names


def _records(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in run["records"] if r.get("ok") and r["mode"] in PROJECTED_MODES and r["stats"].get("steps")]


# -------------------------------------------------------------------------------------------- the costs
def fit_linear(samples: Sequence[tuple[float, float, float]]) -> ForwardCost:
    """Least-squares ``ms = a x forwards + b x rows`` over (forwards, rows, ms), both >= 0."""
    sff = sum(f * f for f, _, _ in samples)
    srr = sum(r * r for _, r, _ in samples)
    sfr = sum(f * r for f, r, _ in samples)
    sfy = sum(f * y for f, _, y in samples)
    sry = sum(r * y for _, r, y in samples)
    if sff <= 0:
        raise ProjectionError("no forwards to fit")
    det = sff * srr - sfr * sfr
    if det > 1e-9 * sff * srr:
        a, b = (sfy * srr - sry * sfr) / det, (sry * sff - sfy * sfr) / det
        if a >= 0 and b >= 0:
            return ForwardCost(a, b)
        if a < 0:  # one coefficient alone, the other clamped at 0
            return ForwardCost(0.0, max(sry / srr, 0.0))
    return ForwardCost(max(sfy / sff, 0.0), 0.0)


def _forward_sample(stats: Mapping[str, Any], service: str, prefill_rows: int) -> tuple[float, float, float]:
    """(decode forwards, decode rows, decode forward ms) of one service in one request."""
    spans = _spans(stats, service, _FORWARD, decode_start(stats))
    rows = max(int(stats["services"][service]["rows"]) - prefill_rows, 0)
    return len(spans), rows, sum(end - start for start, end in spans)


def fit_per_group(samples: Mapping[str, Sequence[tuple[float, float, float]]]) -> dict[str, ForwardCost]:
    """``ms = a[group] x forwards + b x rows`` over (forwards, rows, ms) by group: the cost per row ``b`` of
    :func:`fit_linear` over every sample, then each group's own cost per forward (least squares, >= 0)."""
    slope = fit_linear([s for group in samples.values() for s in group]).per_row_ms
    out = {}
    for name, group in samples.items():
        sff = sum(f * f for f, _, _ in group)
        if sff <= 0:
            raise ProjectionError(f"no decode forwards in the run's {name} requests")
        per_forward = sum(f * (y - slope * r) for f, r, y in group) / sff
        out[name] = ForwardCost(max(per_forward, 0.0), slope)
    return out


def fit_forwards(run: Mapping[str, Any]) -> dict[str, ModeForwards]:
    """Per mode, a stage's cost per layer and the verifier head's cost (see the module docstring)."""
    stage: dict[str, list[tuple[float, float, float]]] = {}
    head: dict[str, list[tuple[float, float, float]]] = {}
    for record in _records(run):
        stats, mode = record["stats"], record["mode"]
        for name, layers in _stage_names(run):
            forwards, rows, ms = _forward_sample(stats, name, int(stats["prompt_tokens"]))
            stage.setdefault(mode, []).append((forwards, rows, ms / layers))
        head.setdefault(mode, []).append(_forward_sample(stats, VERIFIER, 1))  # its prefill: the last prompt row
    layer, verifier = fit_per_group(stage), fit_per_group(head)
    return {mode: ModeForwards(layer[mode], verifier[mode]) for mode in stage}


def _gaps(ends: Sequence[Span], starts: Sequence[Span]) -> list[float]:
    """For each span of ``ends``, the time to the first span of ``starts`` that begins after it ends."""
    out, j = [], 0
    for _, end in ends:
        while j < len(starts) and starts[j][0] < end:
            j += 1
        if j < len(starts):
            out.append(starts[j][0] - end)
    return out


def fit_hops(run: Mapping[str, Any]) -> Hops:
    """Median hop delays over the run's ar steps."""
    stations = [name for name, _ in _stage_names(run)] + [VERIFIER]
    forward, segment, verdict, expand = [], [], [], []
    for record in (r for r in _records(run) if r["mode"] == "ar"):
        stats = record["stats"]
        begin = decode_start(stats)
        fwd = {name: _spans(stats, name, _FORWARD, begin) for name in stations}
        drafts, decisions = _spans(stats, DRAFTER, _DRAFT, begin), _spans(stats, SCHEDULER, _SCHEDULE, begin - 1e-3)
        for a, b in zip(stations, stations[1:], strict=False):
            forward += _gaps(fwd[a], fwd[b])
        segment += _gaps(drafts, fwd[stations[0]])
        verdict += _gaps(fwd[VERIFIER], decisions)
        expand += _gaps(decisions, drafts)
    if not (forward and segment and verdict and expand):
        raise ProjectionError("the run has no traced ar steps: the hops are measured on them")
    return Hops(*(statistics.median(g) for g in (forward, segment, verdict, expand)))


# ------------------------------------------------------------------------------------------ the requests
def expansions(stats: Mapping[str, Any], begin: float) -> tuple[Expansion, ...]:
    """The drafter's decode answers: each run of ``send`` spans (its segments, then the report to the
    scheduler) closes one, which costs every ``draft`` span since the previous (a context extension
    after a Prune, then the Expand's own drafting)."""
    flat = (stats.get("trace") or {}).get(DRAFTER) or []
    spans = sorted((start, code, dur) for code, start, dur in zip(flat[0::3], flat[1::3], flat[2::3], strict=True)
                   if start / 1e3 >= begin and code in (_DRAFT, _SEND))
    out: list[Expansion] = []
    draft_us, sends = 0.0, 0
    for _, code, dur in [*spans, (math.inf, _DRAFT, 0)]:
        if code == _SEND:
            sends += 1
            continue
        if sends:
            out.append(Expansion(max(sends - 1, 1), draft_us / 1e3))
            draft_us, sends = 0.0, 0
        draft_us += dur
    return tuple(out)


def behaviour(run: Mapping[str, Any], record: Mapping[str, Any]) -> Behaviour:
    """One request's decode work and acceptance (a flowspec request that drafted ahead: with its :class:`DraftAhead`)."""
    stats = record["stats"]
    begin = decode_start(stats)
    prompt = int(stats["prompt_tokens"])
    stages = [_forward_sample(stats, name, prompt) for name, _ in _stage_names(run)]
    verifier = _forward_sample(stats, VERIFIER, 1)
    answers = expansions(stats, begin)
    if not answers:
        raise ProjectionError(f"request {stats.get('request_id', '?')}: the drafter's trace answers no Expand")
    steps, noops = int(stats["steps"]), int(stats.get("noop_steps", 0))
    ahead = None
    if record["mode"] == "flowspec" and decided_while_drafting(stats):
        draft = run["cluster"]["draft_settings"]
        fills = sum(1 for e in answers if e.segments > 1)
        growth_rows = max(int(stages[0][1]) - fills * (int(draft["fill_nodes"]) + 1), 0)
        ahead = draft_ahead(stats, begin, steps + noops, growth_rows, int(draft["grow_levels"]))
        ahead = dataclasses.replace(ahead, drains=run.get("drafter_loop") == DRAINING_LOOP)
    return Behaviour(
        mode=record["mode"], new_tokens=int(stats["new_tokens"]),
        steps=steps, noops=noops, rounds=max(int(stats["rounds"]), 1),
        expansions=answers,
        stage_rows=tuple(int(r) for _, r, _ in stages), verifier_rows=int(verifier[1]), ahead=ahead,
    )


def measured_rates(run: Mapping[str, Any]) -> dict[str, float]:
    """Decode tokens/s per mode as the run's summary printed it."""
    return {s["mode"]: float(s["decode_tokens_per_s"]) for s in run.get("summary", [])}


def decided_while_drafting(stats: Mapping[str, Any]) -> int:
    """Decode decisions the scheduler took while the drafter was drafting: none when the scheduler waits
    for the drafter's report of every Expand and the drafter drafts only on an Expand (the old protocol);
    many when the drafter drafts ahead of the verdicts."""
    begin = decode_start(stats)
    drafts = _spans(stats, DRAFTER, _DRAFT, begin)
    return sum(1 for t, _ in _spans(stats, SCHEDULER, _SCHEDULE, begin) if any(a < t < b for a, b in drafts))


def fit_run(run: Mapping[str, Any]) -> RunFit:
    """Costs and requests of one ``bench --json`` run (with its trace), of either drafting protocol."""
    names = _stage_names(run)
    requests = tuple(behaviour(run, r) for r in _records(run))
    if not requests:
        raise ProjectionError("the run has no finished ar, chunk or flowspec requests")
    draft = run["cluster"]["draft_settings"]
    costs = Costs(
        layers=sum(n for _, n in names), forwards=fit_forwards(run), hops=fit_hops(run),
        fill_nodes=int(draft["fill_nodes"]) + 1, segment_cap=int(draft["segment_cap"]),
        fill_segments=int(draft.get("fill_segments", 0)),
    )
    return RunFit(stages=len(names), costs=costs, requests=requests, measured=measured_rates(run))


DRAFTER_LOOPS = ("measured", "drain", "one")


def with_drafter_loop(fit: RunFit, loop: str) -> RunFit:
    """``fit`` with its drafting-ahead requests' loop set: ``drain`` (every arrived message between levels),
    ``one`` (one per level) or ``measured`` (as recorded)."""
    if loop == "measured":
        return fit
    if loop not in DRAFTER_LOOPS:
        raise ProjectionError(f"unknown drafter loop {loop!r}")
    requests = tuple(r if r.ahead is None else
                     dataclasses.replace(r, ahead=dataclasses.replace(r.ahead, drains=loop == "drain"))
                     for r in fit.requests)
    return dataclasses.replace(fit, requests=requests)
