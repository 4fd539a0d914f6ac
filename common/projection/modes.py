"""Each measured request as rounds of the ring on N boards (:mod:`common.projection.ring`), and the projection.

Times measured on the run's machine are divided by the boards' ``speed``; the link adds its latency to
every hop and carries ``rows x hidden x 2`` bytes on the hops into stage 2..N and the verifier. Stage
``i`` of N holds the layers :func:`common.cluster.partition.even_split` gives it, at the cost per layer that
the request's mode measured. Held at the measured values, whatever N (a deeper pipeline changes them
in truth: the main error of a cross projection): steps, noop verdicts and rounds, the drafter's ms for
each Expand, and the rows a flowspec request sends in all.

- ``ar``: one round per step, a one-row segment.
- ``chunk``: per round the tree (the verifier's decode rows / rounds) cut into N + 1 segments (the
  run's ``fill_segments`` if set), after the drafter's measured ms for that round.
- ``flowspec``: the rounds as the drafter's answers measured them (a fill starts one, each growth adds
  a verdict), each with its measured draft ms. A fill is the fill tree cut the same way; a growth is
  one segment of the request's other stage-1 rows shared evenly. Pruning thins segments on
  their way: at each point of the ring (interpolated by relative position between the measured
  stages) a segment keeps the measured share of the rows sent (rows there / stage-1 rows). Every
  segment is forwarded at every station: those that give a step are, and a segment pruned to nothing
  (skipped in truth) is mostly one the round's end drops anyway.
- ``flowspec`` drafting ahead (the asynchronous drafter): per round its measured fill ms and verdicts
  (each a step or a noop, as measured); the drafter's measured ms per level (its throughput bounds the
  verified steps) and levels per growth; a segment of ``k`` levels carries ``k`` x the measured stage-1
  rows per level, thinned as above.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.cluster.partition import even_split
from common.observability.bench_report import decode_rate
from common.projection.fit import Behaviour, Costs, RunFit
from common.projection.ring import (
    PROJECTED_MODES,
    Ahead,
    Boards,
    Job,
    Messages,
    ProjectionError,
    Round,
    ring_ms,
)


class _Ring:
    """The target ring's stations and hops, with the run's costs."""

    def __init__(self, costs: Costs, boards: Boards, mode: str) -> None:
        if mode not in costs.forwards:
            raise ProjectionError(f"the run measured no {mode} forwards to cost them with")
        if boards.stages > costs.layers:
            raise ProjectionError(f"cannot split {costs.layers} layers into {boards.stages} stages")
        self.costs, self.boards, self.forwards = costs, boards, costs.forwards[mode]
        self.layers = [end - start for start, end in even_split(costs.layers, boards.stages)]
        self.messages = Messages(boards.hop_ms(costs.hops.verdict_ms), boards.hop_ms(costs.hops.expand_ms))

    def job(self, rows: float, kept: Sequence[float] | None = None) -> Job:
        """A segment of ``rows`` rows; per station, the share of its rows still there (all when None)."""
        kept = kept or [1.0] * (len(self.layers) + 1)
        speed, layer, head, hops = self.boards.speed, self.forwards.layer, self.forwards.head, self.costs.hops
        holds = [lay * layer.ms(1, k * rows) / speed for lay, k in zip(self.layers, kept, strict=False)]
        holds.append(head.ms(1, kept[-1] * rows) / speed)
        delays = [self.boards.hop_ms(hops.segment_ms)]
        delays += [self.boards.hop_ms(hops.forward_ms, rows * k) for k in kept[:-1]]
        return Job(tuple(delays), tuple(holds))

    def draft_ms(self, ms: float) -> float:
        return ms / self.boards.speed


def _ar(ring: _Ring, r: Behaviour) -> list[Round]:
    return [Round(ring.draft_ms(e.draft_ms), (ring.job(1),)) for e in r.expansions]


def _chunk(ring: _Ring, r: Behaviour) -> list[Round]:
    nodes = round(r.verifier_rows / r.rounds)
    fill = tuple(ring.job(size) for size in ring.costs.fill_sizes(nodes, ring.boards.stages))
    return [Round(ring.draft_ms(e.draft_ms), fill) for e in r.expansions]


def _interpolate(values: Sequence[float], points: int) -> list[float]:
    """``values`` measured at evenly spaced points of the ring, read at ``points`` evenly spaced points."""
    if len(values) == 1 or points == 1:
        return [values[0]] * points
    out = []
    for i in range(points):
        x = i * (len(values) - 1) / (points - 1)
        lo = min(int(x), len(values) - 2)
        out.append(values[lo] + (x - lo) * (values[lo + 1] - values[lo]))
    return out


def _flowspec(ring: _Ring, r: Behaviour) -> list[Round]:
    """See the module docstring."""
    costs, n = ring.costs, ring.boards.stages
    sent_rows = r.stage_rows[0]
    if not sent_rows:
        raise ProjectionError("a flowspec request without stage-1 rows cannot be projected")
    kept = [*_interpolate([rows / sent_rows for rows in r.stage_rows], n), r.verifier_rows / sent_rows]
    fill = tuple(ring.job(size, kept) for size in costs.fill_sizes(costs.fill_nodes, n))
    if r.ahead is not None:
        a = r.ahead
        segments = tuple(ring.job(k * a.level_rows, kept) for k in range(1, a.levels + 1))
        return [Round(ring.draft_ms(fill_ms), fill, gather=False,
                      ahead=Ahead(steps, ring.draft_ms(a.level_ms), a.levels, segments, drains=a.drains))
                for fill_ms, steps in zip(a.fill_ms, a.steps, strict=True)]
    fills = sum(1 for e in r.expansions if e.segments > 1)
    grows = max(len(r.expansions) - fills, 1)
    grow = ring.job(max(sent_rows - fills * costs.fill_nodes, 0) / grows, kept)
    rounds: list[tuple[float, list[float]]] = []
    for e in r.expansions:
        if e.segments > 1 or not rounds:  # a fill starts a round
            rounds.append((e.draft_ms, []))
        else:
            rounds[-1][1].append(e.draft_ms)
    return [Round(ring.draft_ms(fill_ms), fill, gather=False, grow_ms=tuple(ring.draft_ms(g) for g in grown),
                  grow=grow) for fill_ms, grown in rounds]


_MODES = {"ar": _ar, "chunk": _chunk, "flowspec": _flowspec}


def request_rounds(costs: Costs, r: Behaviour, boards: Boards) -> tuple[list[Round], Messages]:
    """One measured request as the rounds the ring would do on ``boards``, and its control hops."""
    ring = _Ring(costs, boards, r.mode)
    return _MODES[r.mode](ring, r), ring.messages


def request_ms(costs: Costs, r: Behaviour, boards: Boards) -> float:
    """Predicted decode milliseconds of one measured request on ``boards``."""
    return ring_ms(*request_rounds(costs, r, boards))


def project(fit: RunFit, boards: Boards, behaviour_from: RunFit | None = None) -> dict[str, float]:
    """Predicted decode tokens/s per mode on ``boards`` (total tokens / total time, as ``bench`` pools them).

    ``behaviour_from``: replay that run's requests (e.g. one measured at the target N) with ``fit``'s
    costs, to tell the cost model's error from the change of acceptance and drafting with N.
    """
    source = behaviour_from or fit
    if source.costs.layers != fit.costs.layers:
        raise ProjectionError(f"the runs' models differ: {fit.costs.layers} and {source.costs.layers} layers")
    runs: dict[str, list[dict[str, float]]] = {}
    for r in source.requests:
        runs.setdefault(r.mode, []).append({"new_tokens": r.new_tokens, "decode_ms": request_ms(fit.costs, r, boards)})
    return {mode: decode_rate(runs[mode]) for mode in PROJECTED_MODES if mode in runs}
