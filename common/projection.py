"""Projecting one measured ``flowring bench`` run onto N boards of a given speed and link.

:func:`fit_run` reads a run (the JSON of ``bench --json``, with ``--trace`` for forward times) into
per-service costs and, per measured request, its acceptance; :func:`project` replays every measured
request on ``N`` boards and pools decode tokens/s per mode as ``bench`` does. Pure: no I/O.

Costs, fitted on the run's own machine (the unit of ``speed`` = 1.0):

- A stage forward of ``rows`` rows costs ``layers x (per_forward_ms + per_row_ms x rows)``, least
  squares over every stage's forwards of the run (their summed ``forward`` spans, prefill included;
  attention over the growing context is folded into the two coefficients). The verifier's head:
  ``per_forward_ms + per_row_ms x rows``, fitted the same way.
- A hop (one message between services: its encoding, queueing, transport and decoding) costs
  ``hop_ms``: what an ``ar`` step takes beyond its fitted forwards and draft, over its ``N + 3`` hops
  (drafter -> stage 1 -> ... -> stage N -> verifier -> scheduler -> drafter).
- Drafting costs what the request's ``draft`` spans after its prefill add up to, per step.

The projection, for N stages (layers split as :func:`common.partition.even_split` does):

- Every measured time is divided by ``speed`` (compute and a hop's software cost alike); the link adds
  ``latency + bytes x 8 / bandwidth`` to each hop, with ``bytes = rows x hidden x 2`` (bf16 hidden
  states) on the N hops that carry them and latency alone on the others. The link's serialisation is
  charged to the message, not modelled as a separate queue.
- Acceptance is the measured one, whatever N: each request keeps its steps, rounds, nodes per round
  and (flowspec) each stage's forwards and rows per step. In truth a deeper pipeline changes them.
- ``ar``: a step is one trip round the ring (``N + 3`` hops) with one row per forward.
- ``chunk``: a round drafts its tree, then its nodes cross the stages and the verifier as ``N + 1``
  segments in a pipeline (a flow shop), then the verdict returns (2 hops).
- ``flowspec``: the longer of two bounds, plus a per-step gap (the rest of the measured step time,
  fitted per request at the run's own N and kept). The busiest service's work: the drafter's, or a
  stage's measured forwards and rows per step at the same relative position in the ring (a round's
  fill being one segment per hop, each extra stage adds one forward a round), or the verifier's. The
  critical path: each round's first verdict waits for a fill segment's trip round the ring, then each
  step for the draft (the scheduler waits for the drafter's report) or a trip over the N + 1 segments
  in flight.
- ``local`` (one process, no ring) is not projected here; ``flowring project`` shows it as measured,
  times ``speed``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.bench_report import decode_rate
from common.link import LinkSettings
from common.observability.trace import SPAN_KINDS
from common.partition import even_split
from common.tree import segment_sizes

PROJECTED_MODES = ("ar", "chunk", "flowspec")
LOCAL = "local"
EXTRA_HOPS = 3  # per ring trip besides the N hidden-state hops: drafter->stage 1, verifier->scheduler->drafter
BYTES_PER_HIDDEN = 2  # bf16
VERIFIER = "verifier"
_FORWARD = SPAN_KINDS.index("forward")
_DRAFT = SPAN_KINDS.index("draft")


class ProjectionError(ValueError):
    """A run that cannot be projected (no usable records, no ar mode, stages that do not fit the model)."""


@dataclass(frozen=True)
class ForwardCost:
    """Milliseconds of a forward: ``per_forward_ms`` + ``per_row_ms`` x rows (per layer for a stage)."""

    per_forward_ms: float
    per_row_ms: float

    def ms(self, forwards: float, rows: float) -> float:
        return forwards * self.per_forward_ms + rows * self.per_row_ms


@dataclass(frozen=True)
class Boards:
    """Where to project: ``stages`` boards of relative ``speed`` (1.0: the run's), joined by ``link``."""

    stages: int
    speed: float = 1.0
    link: LinkSettings = LinkSettings()
    hidden_size: int = 0  # needed only when the link has a bandwidth

    def __post_init__(self) -> None:
        if self.stages < 1 or self.speed <= 0:
            raise ProjectionError(f"need stages >= 1 and speed > 0, not {self.stages} and {self.speed}")
        if self.link.mbps > 0 and self.hidden_size <= 0:
            raise ProjectionError("a link with a bandwidth needs the model's hidden size")

    def hop_ms(self, software_ms: float, rows: float = 0.0) -> float:
        """One hop: its software cost on these boards plus the link carrying ``rows`` hidden states."""
        return software_ms / self.speed + self.link.cost_ms(round(rows * self.hidden_size * BYTES_PER_HIDDEN))


@dataclass(frozen=True)
class Request:
    """One measured request: its decode work and acceptance, and what it took."""

    mode: str
    new_tokens: int
    decode_ms: float
    steps: int
    rounds: int
    drafter_ms_per_step: float
    stage_forwards: tuple[float, ...]  # per stage in ring order, decode only, per step
    stage_rows: tuple[float, ...]
    verifier_forwards: float  # decode only, per step
    verifier_rows: float


@dataclass(frozen=True)
class RunFit:
    """A run's fitted costs and its measured requests."""

    stages: int
    layers: int
    stage_layer: ForwardCost  # per layer
    head: ForwardCost
    hop_ms: float
    fill_nodes: int  # a new round's tree, root included
    segment_cap: int
    requests: tuple[Request, ...]
    gap_ms: Mapping[int, float]  # flowspec: index in ``requests`` -> per-step gap at the run's N
    measured: Mapping[str, float]  # mode -> decode tokens/s as the run printed it


# ------------------------------------------------------------------------------------------------ fitting
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


def forward_ms(stats: Mapping[str, Any], service: str) -> float:
    """A service's summed ``forward`` spans in one request (its busy time when the run has no trace)."""
    flat = (stats.get("trace") or {}).get(service)
    if not flat:
        return float(stats["services"][service]["busy_ms"])
    return sum(dur for code, dur in zip(flat[0::3], flat[2::3], strict=True) if code == _FORWARD) / 1e3


def draft_ms_per_step(stats: Mapping[str, Any]) -> float:
    """The drafter's ``draft`` spans after the prefill, per step (the reported figure without a trace).

    The reported ``drafter_ms_per_step`` counts only the drafting that answers an Expand; the spans also
    hold a round's tree fill, which is on the critical path as well.
    """
    trace = stats.get("trace") or {}
    flat = trace.get("drafter")
    if not flat:
        return float(stats.get("drafter_ms_per_step", 0.0))
    decode_from = min(min(f[1::3]) for f in trace.values() if f) + float(stats["prefill_ms"]) * 1e3
    spans = zip(flat[0::3], flat[1::3], flat[2::3], strict=True)
    return sum(dur for code, start, dur in spans if code == _DRAFT and start >= decode_from) / 1e3 / int(stats["steps"])


def _prefill(stats: Mapping[str, Any], prefill_chunk: int) -> tuple[int, int]:
    """A stage's prefill forwards and rows for this request's prompt."""
    prompt = int(stats["prompt_tokens"])
    return math.ceil(prompt / prefill_chunk), prompt


def _ok_records(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in run["records"] if r.get("ok") and r["mode"] in PROJECTED_MODES and r["stats"].get("steps")]


def _stage_names(run: Mapping[str, Any]) -> list[tuple[str, int]]:
    return [(s["name"], s["layers"][1] - s["layers"][0]) for s in run["cluster"]["stages"]]


def fit_costs(run: Mapping[str, Any]) -> tuple[ForwardCost, ForwardCost]:
    """Per-layer stage cost and the verifier head's cost, over every projected request of the run."""
    stage, head = [], []
    for record in _ok_records(run):
        stats = record["stats"]
        for name, layers in _stage_names(run):
            svc = stats["services"][name]
            stage.append((svc["forwards"], svc["rows"], forward_ms(stats, name) / layers))
        svc = stats["services"][VERIFIER]
        head.append((svc["forwards"], svc["rows"], forward_ms(stats, VERIFIER)))
    return fit_linear(stage), fit_linear(head)


def _request(run: Mapping[str, Any], stats: Mapping[str, Any], mode: str) -> Request:
    """One request's decode work per step (its prefill forwards taken out)."""
    steps = int(stats["steps"])
    pre_forwards, pre_rows = _prefill(stats, int(run["cluster"]["prefill_chunk"]))
    forwards, rows = [], []
    for name, _ in _stage_names(run):
        svc = stats["services"][name]
        forwards.append(max(svc["forwards"] - pre_forwards, 0) / steps)
        rows.append(max(svc["rows"] - pre_rows, 0) / steps)
    verifier = stats["services"][VERIFIER]  # its prefill: one forward of the last prompt row
    return Request(
        mode=mode, new_tokens=int(stats["new_tokens"]), decode_ms=float(stats["decode_ms"]), steps=steps,
        rounds=max(int(stats["rounds"]), 1), drafter_ms_per_step=draft_ms_per_step(stats),
        stage_forwards=tuple(forwards), stage_rows=tuple(rows),
        verifier_forwards=max(verifier["forwards"] - 1, 0) / steps, verifier_rows=max(verifier["rows"] - 1, 0) / steps,
    )


def fit_hop_ms(requests: Sequence[Request], layers: int, stage_layer: ForwardCost, head: ForwardCost,
               stages: int) -> float:
    """Software cost of one hop: the ar step time the fitted forwards and the draft leave, per hop."""
    ar = [r for r in requests if r.mode == "ar"]
    if not ar:
        raise ProjectionError("the run has no ar requests: the hop cost is fitted on them")
    compute = layers * stage_layer.ms(1, 1) + head.ms(1, 1)
    residuals = [(r.decode_ms / r.steps - compute - r.drafter_ms_per_step) / (stages + EXTRA_HOPS) for r in ar]
    return max(sum(residuals) / len(residuals), 0.0)


def measured_rates(run: Mapping[str, Any]) -> dict[str, float]:
    """Decode tokens/s per mode as the run's summary printed it."""
    return {s["mode"]: float(s["decode_tokens_per_s"]) for s in run.get("summary", [])}


def fit_run(run: Mapping[str, Any]) -> RunFit:
    """Costs, requests and flowspec's per-step gaps of one ``bench --json`` run."""
    names = _stage_names(run)
    if not names:
        raise ProjectionError("the run's cluster has no stages")
    stage_layer, head = fit_costs(run)
    requests = tuple(_request(run, r["stats"], r["mode"]) for r in _ok_records(run))
    layers = sum(n for _, n in names)
    draft = run["cluster"]["draft_settings"]
    fit = RunFit(
        stages=len(names), layers=layers, stage_layer=stage_layer, head=head,
        hop_ms=fit_hop_ms(requests, layers, stage_layer, head, len(names)),
        fill_nodes=int(draft["fill_nodes"]) + 1, segment_cap=int(draft["segment_cap"]),
        requests=requests, gap_ms={}, measured=measured_rates(run),
    )
    own = Boards(len(names))
    gaps = {i: (r.decode_ms - _flowspec_ms(fit, r, own, 0.0)) / r.steps
            for i, r in enumerate(requests) if r.mode == "flowspec"}
    return dataclasses.replace(fit, gap_ms=gaps)


def with_acceptance(costs: RunFit, behaviour: RunFit) -> RunFit:
    """``costs``' fitted costs with ``behaviour``'s requests (steps, rounds, draft ms and work per step).

    To see how much of an error is the acceptance's and the drafting's change with N rather than the cost
    model's: ``behaviour`` is a run at the target N (its draft times as measured there). The flowspec gap
    is ``costs``' mean per step.
    """
    if costs.layers != behaviour.layers:
        raise ProjectionError(f"the runs' models differ: {costs.layers} and {behaviour.layers} layers")
    gaps = list(costs.gap_ms.values())
    gap = sum(gaps) / len(gaps) if gaps else 0.0
    return dataclasses.replace(behaviour, stage_layer=costs.stage_layer, head=costs.head, hop_ms=costs.hop_ms,
                               gap_ms=dict.fromkeys(behaviour.gap_ms, gap), measured=costs.measured)


# --------------------------------------------------------------------------------------------- the model
def flow_shop_ms(times: Sequence[Sequence[float]]) -> float:
    """Makespan of jobs crossing stations in order, each station one job at a time, FIFO.

    ``times[station][job]``: how long ``job`` holds ``station``.
    """
    done = [0.0] * (len(times[0]) if times else 0)
    for station in times:
        free = 0.0
        for job, t in enumerate(station):
            free = max(free, done[job]) + t
            done[job] = free
    return done[-1] if done else 0.0


def _stage_layers(fit: RunFit, boards: Boards) -> list[int]:
    if boards.stages > fit.layers:
        raise ProjectionError(f"cannot split {fit.layers} layers into {boards.stages} stages")
    return [end - start for start, end in even_split(fit.layers, boards.stages)]


def _station_ms(fit: RunFit, boards: Boards, layers: int | None, forwards: float, rows: float,
                hidden_in: bool = True) -> float:
    """A station's time for ``forwards`` forwards of ``rows`` rows in all, each arriving over one hop.

    ``layers`` None: the verifier's head. ``hidden_in``: the hop carries hidden states (stage 1 gets
    token ids from the drafter: latency alone).
    """
    cost = fit.head.ms(forwards, rows) if layers is None else layers * fit.stage_layer.ms(forwards, rows)
    hidden_rows = rows / forwards if forwards and hidden_in else 0.0
    per_hop = boards.hop_ms(fit.hop_ms, hidden_rows) if forwards else 0.0
    return cost / boards.speed + forwards * per_hop


def _pipeline_ms(fit: RunFit, boards: Boards, segments: Sequence[int]) -> float:
    """``segments`` (their node counts) sent by the drafter through every stage and the verifier."""
    stations: list[int | None] = [*_stage_layers(fit, boards), None]
    times = [[_station_ms(fit, boards, layers, 1, size, i > 0) for size in segments] for i, layers in enumerate(stations)]
    return flow_shop_ms(times)


def _verdict_ms(fit: RunFit, boards: Boards) -> float:
    """Verifier -> scheduler -> drafter: the hops that carry a verdict back to the head of the ring."""
    return 2 * boards.hop_ms(fit.hop_ms)


def _ar_ms(fit: RunFit, r: Request, boards: Boards) -> float:
    step = r.drafter_ms_per_step / boards.speed + _pipeline_ms(fit, boards, [1]) + _verdict_ms(fit, boards)
    return r.steps * step


def _chunk_ms(fit: RunFit, r: Request, boards: Boards) -> float:
    nodes = round(r.verifier_rows * r.steps / r.rounds)
    segments = segment_sizes(nodes, boards.stages + 1, fit.segment_cap)
    per_round = r.drafter_ms_per_step * r.steps / r.rounds / boards.speed + _pipeline_ms(fit, boards, segments)
    return r.rounds * (per_round + _verdict_ms(fit, boards))


def _source_stage(fit: RunFit, stage: int, stages: int) -> int:
    """The measured stage whose per-step work stands for stage ``stage`` (0-based) of ``stages``."""
    if stages == 1:
        return 0
    return round(stage * (fit.stages - 1) / (stages - 1))


def _flowspec_busiest_ms(fit: RunFit, r: Request, boards: Boards) -> float:
    """The busiest service's work over the request: the drafter, a stage or the verifier.

    A round's fill is cut into one segment per hop, so each extra stage adds one forward a round.
    """
    extra_fill = r.rounds / r.steps * (boards.stages - fit.stages)
    loads = [r.drafter_ms_per_step / boards.speed]
    for i, layers in enumerate(_stage_layers(fit, boards)):
        src = _source_stage(fit, i, boards.stages)
        forwards = max(r.stage_forwards[src] + extra_fill, 0.0)
        loads.append(_station_ms(fit, boards, layers, forwards, r.stage_rows[src], i > 0))
    loads.append(_station_ms(fit, boards, None, r.verifier_forwards, r.verifier_rows))
    return r.steps * max(loads)


def _flowspec_latency_ms(fit: RunFit, r: Request, boards: Boards) -> float:
    """The critical path: each round's first verdict waits for a fill segment's trip round the ring; each
    step then for the draft (the scheduler waits for its report) or one segment's trip over N+1 in flight."""
    trip = 2 * boards.hop_ms(fit.hop_ms)
    for i, layers in enumerate(_stage_layers(fit, boards)):
        src = _source_stage(fit, i, boards.stages)
        forwards, rows = r.stage_forwards[src], r.stage_rows[src]
        trip += _station_ms(fit, boards, layers, 1, rows / forwards, i > 0) if forwards else 0.0
    if r.verifier_forwards:
        trip += _station_ms(fit, boards, None, 1, r.verifier_rows / r.verifier_forwards)
    first = segment_sizes(fit.fill_nodes, boards.stages + 1, fit.segment_cap)[:1]
    refill = _pipeline_ms(fit, boards, first) + _verdict_ms(fit, boards)
    return r.rounds * refill + r.steps * max(r.drafter_ms_per_step / boards.speed, trip / (boards.stages + 1))


def _flowspec_ms(fit: RunFit, r: Request, boards: Boards, gap_ms: float) -> float:
    bound = max(_flowspec_busiest_ms(fit, r, boards), _flowspec_latency_ms(fit, r, boards))
    return bound + r.steps * gap_ms / boards.speed


def request_ms(fit: RunFit, index: int, boards: Boards) -> float:
    """Predicted decode milliseconds of the run's request ``index`` on ``boards``."""
    r = fit.requests[index]
    if r.mode == "ar":
        return _ar_ms(fit, r, boards)
    if r.mode == "chunk":
        return _chunk_ms(fit, r, boards)
    return _flowspec_ms(fit, r, boards, fit.gap_ms[index])


def project(fit: RunFit, boards: Boards) -> dict[str, float]:
    """Predicted decode tokens/s per projected mode on ``boards`` (total tokens / total time)."""
    runs: dict[str, list[dict[str, float]]] = {}
    for i, r in enumerate(fit.requests):
        runs.setdefault(r.mode, []).append({"new_tokens": r.new_tokens, "decode_ms": request_ms(fit, i, boards)})
    return {mode: decode_rate(runs[mode]) for mode in PROJECTED_MODES if mode in runs}


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured."""
    return (predicted - measured) / measured if measured else math.nan
