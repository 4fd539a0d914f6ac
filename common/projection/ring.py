"""A small event-level model of the ring: decode milliseconds of a request on N boards. Pure: no I/O.

The ring as the code runs it (``services/*/core.py``): the drafter sends segments into stage 1; each
stage and then the verifier forwards them one at a time, in arrival order; the verifier's verdict goes
to the scheduler, which decides one verdict at a time; each decision sends an Expand to the drafter. In
ar, chunk and the old flowspec (a drafter that drafts only on an Expand) the scheduler decides only
once the drafter has reported its last expansion. Per mode:

- ``ar``: a round is one step: a one-row segment round the ring.
- ``chunk``: a round drafts a tree (the drafter's ``fill_ms``), cuts it into segments (one per hop by
  default, :func:`common.speculation.tree.segment_sizes`), and the verdict comes once the verifier has the last.
- ``flowspec`` (old): a round drafts the same fill; every segment reaching the verifier gives a verdict (a
  step, or a ``noop`` when pruning emptied it); every decision but the round's last sends an Expand and
  the drafter grows one more segment (``grow_ms``). The round's last decision ends it: segments still
  queued are dropped, a forward under way finishes.
- ``flowspec`` drafting ahead (the asynchronous drafter, :class:`Ahead`): the scheduler decides every
  verdict at once and sends the drafter a Prune (a step; not for a noop) and an Expand (a credit). After
  the fill the drafter loops (``services/runtime.py``): it handles every message that has arrived (one
  only in runs recorded before the runtime drained its sockets: ``Ahead.drains``), then drafts one
  level (``level_ms``) unless it is ``levels`` past its last send (then, with no message, it waits). The fill leaves one credit; a credit sends every level drafted since the last send as one
  segment, at once if there is one, else at the end of the next level. The round's last Prune stops the
  growth; the next fill is drafted once the round's last Expand is handled.

:func:`ring_ms` simulates this exactly (FIFO stations, a drafter and a scheduler that each do one
thing at a time); :mod:`common.projection.fit` measures every input from a ``bench --json`` run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.wire.link import LinkSettings

PROJECTED_MODES = ("ar", "chunk", "flowspec")
LOCAL = "local"
BYTES_PER_HIDDEN = 2  # bf16 hidden states on the stage hops


class ProjectionError(ValueError):
    """A run that cannot be projected, or boards it cannot be projected onto."""


@dataclass(frozen=True)
class ForwardCost:
    """Milliseconds of forwards: ``per_forward_ms`` x forwards + ``per_row_ms`` x rows."""

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
        """One hop: its measured software cost on these boards plus the link carrying ``rows`` hidden states."""
        return software_ms / self.speed + self.link.cost_ms(round(rows * self.hidden_size * BYTES_PER_HIDDEN))


@dataclass(frozen=True)
class Job:
    """One segment's way round the ring: per station (stages in order, then the verifier), the delay of
    the hop into it and the time it holds it (0 where the segment is dropped before the station)."""

    hop_ms: tuple[float, ...]
    hold_ms: tuple[float, ...]


@dataclass(frozen=True)
class Ahead:
    """A drafter that drafts ahead of the verdicts: ``verdicts`` in the round, one draft level per
    ``level_ms``, at most ``levels`` past the last send; ``segments[k]``: the segment of ``k + 1`` levels."""

    steps: tuple[bool, ...]  # per verdict: a step (a Prune and an Expand to the drafter) or a noop (an Expand)
    level_ms: float
    levels: int
    segments: tuple[Job, ...]
    extra_credits: int = 1  # the drafter's EXTRA_IN_FLIGHT
    drains: bool = True  # it handles every message that has arrived between levels, not one per level

    @property
    def verdicts(self) -> int:
        return len(self.steps)

    def __post_init__(self) -> None:
        if not self.steps or self.levels < 1 or len(self.segments) < self.levels or self.level_ms < 0:
            raise ProjectionError("drafting ahead needs a verdict, a level, and a segment for every level count")


@dataclass(frozen=True)
class Round:
    """One round as the ring does it, times on the target boards.

    ``fill_ms``: the drafter's work before the round's first segments leave; ``fill``: those segments.
    ``gather``: one verdict once the verifier has the last fill segment (ar, chunk). Otherwise (flowspec)
    one verdict per segment, and every decision but the round's last asks the drafter for one more
    segment, ``grow``, which takes it ``grow_ms[k]`` after decision ``k``: ``len(grow_ms) + 1`` verdicts.
    """

    fill_ms: float
    fill: tuple[Job, ...]
    gather: bool = True
    grow_ms: tuple[float, ...] = ()
    grow: Job | None = None
    ahead: Ahead | None = None  # flowspec drafting ahead of the verdicts: the grow fields are unused

    def __post_init__(self) -> None:
        if not self.fill or (self.grow_ms and self.grow is None):
            raise ProjectionError("a round needs fill segments, and a grown segment when it grows")

    @property
    def grown(self) -> Job:
        """The segment an Expand sends (a round that grows has one: checked when it is made)."""
        if self.grow is None:
            raise ProjectionError("this round grows no segments")
        return self.grow


@dataclass(frozen=True)
class Messages:
    """Delays of the control hops on the target boards: verifier -> scheduler (``verdict_ms``) and
    scheduler <-> drafter (``expand_ms``: an Expand out, a draft report back)."""

    verdict_ms: float
    expand_ms: float


@dataclass
class _Ring:
    """Free times of the stations and the drafter while rounds are simulated."""

    stations: list[float]
    drafter: float = 0.0

    def run(self, job: Job, released: float, until: float = math.inf) -> float:
        """Send ``job`` through every station in turn; returns when the verifier is done with it.

        A station that would start it at or after ``until`` (the round's end) drops it and the rest.
        """
        t = released
        for i, (hop, hold) in enumerate(zip(job.hop_ms, job.hold_ms, strict=True)):
            start = max(t + hop, self.stations[i])
            if start >= until:
                return math.inf
            t = start + hold
            self.stations[i] = t
        return t

    def draft(self, asked: float, ms: float) -> float:
        """The drafter's work asked for at ``asked``; returns when it ends."""
        self.drafter = max(asked, self.drafter) + ms
        return self.drafter


def _round_ms(ring: _Ring, r: Round, begin: float, msg: Messages) -> float:
    """Simulate one round from the decision that began it; returns the time of its last decision."""
    released = ring.draft(begin + msg.expand_ms, r.fill_ms)
    report = released + msg.expand_ms  # the scheduler decides nothing before the drafter's report
    if r.gather:
        done = [ring.run(job, released) for job in r.fill]
        return max(done[-1] + msg.verdict_ms, report)
    queue = [(job, released) for job in r.fill]
    verdicts = len(r.grow_ms) + 1
    decision = begin
    for k in range(verdicts):
        job, at = queue[k]
        decision = max(ring.run(job, at) + msg.verdict_ms, report)
        if k < len(r.grow_ms):  # the last decision ends the round (or the request)
            grown = ring.draft(decision + msg.expand_ms, r.grow_ms[k])
            report = grown + msg.expand_ms
            queue.append((r.grown, grown))
    for job, at in queue[verdicts:]:  # in flight when the round ended
        ring.run(job, at, until=decision)
    return decision


@dataclass
class _Drafter:
    """The drafter drafting ahead in one round: its clock, the levels unsent and since its last send, its
    credits, its inbox (arrival, whether an Expand) and how many it has handled."""

    a: Ahead
    at: float
    credits: int
    unsent: int = 0
    grown: int = 0
    inbox: list[tuple[float, bool]] = field(default_factory=list)
    handled: int = 0
    growing: bool = True  # until it handles the round's last Prune
    round_over: bool = False  # the round's last decision is in the inbox

    def turn(self) -> list[tuple[float, int]]:
        """One turn of its loop: handle the messages that have arrived (every one if it drains, else one),
        then draft a level if it grows (with neither, wait for the next message). Returns the segments it
        sent: (when, levels)."""
        sent: list[tuple[float, int]] = []
        arrived = False
        while self.handled < len(self.inbox) and self.inbox[self.handled][0] <= self.at:
            arrived = True
            self._handle(sent)
            if not self.a.drains:
                break
        if self.growing and self.grown < self.a.levels:
            self.at, self.unsent, self.grown = self.at + self.a.level_ms, self.unsent + 1, self.grown + 1
            self._spend(sent)
        elif not arrived and self.handled < len(self.inbox):
            self.at = self.inbox[self.handled][0]  # idle until the next message
        elif not arrived:
            raise ProjectionError("the drafter has nothing to do and no message to wait for")
        return sent

    def _handle(self, sent: list[tuple[float, int]]) -> None:
        """The next message: a Prune (the round's last one stops the growth) or an Expand (a credit)."""
        expand = self.inbox[self.handled][1]
        self.handled += 1
        if not expand and self.round_over and self.handled == len(self.inbox) - 1:
            self.growing = False  # the Prune that ends the round: no tree to grow
        if expand:
            self.credits += 1
            self._spend(sent)
            if not sent and self.grown >= self.a.levels:
                self.grown = 0  # a credit with nothing to send starts the next growth

    def _spend(self, sent: list[tuple[float, int]]) -> None:
        """A credit sends the levels drafted since the last send (and the next growth starts)."""
        if self.credits and self.unsent and self.growing:
            sent.append((self.at, self.unsent))
            self.credits, self.unsent, self.grown = self.credits - 1, 0, 0


def _ahead_round_ms(ring: _Ring, r: Round, a: Ahead, begin: float, msg: Messages) -> float:
    """One round with the drafter drafting ahead (see the module docstring); returns its last decision."""
    released = ring.draft(begin + msg.expand_ms, r.fill_ms)
    done = [ring.run(job, released) for job in r.fill]
    drafter = _Drafter(a, released, a.extra_credits)
    decisions: list[float] = []
    while len(decisions) < a.verdicts or drafter.handled < len(drafter.inbox):
        while len(decisions) < min(len(done), a.verdicts):  # every verdict whose segment is through
            k = len(decisions)
            decisions.append(done[k] + msg.verdict_ms)
            arrival = decisions[-1] + msg.expand_ms
            drafter.inbox += [(arrival, False), (arrival, True)] if a.steps[k] else [(arrival, True)]
            drafter.round_over = len(decisions) == a.verdicts
        if drafter.handled >= len(drafter.inbox) and len(decisions) == a.verdicts:
            break
        for at, levels in drafter.turn():
            until = decisions[-1] if len(decisions) == a.verdicts else math.inf
            done.append(ring.run(a.segments[levels - 1], at, until))
    ring.drafter = drafter.at  # it drafts the next fill once it has handled the round's last Expand
    return decisions[-1]


def ring_ms(rounds: Sequence[Round], msg: Messages) -> float:
    """Decode milliseconds of a request: from the prefill's decision to the last decision."""
    if not rounds:
        return 0.0
    ring = _Ring([0.0] * len(rounds[0].fill[0].hold_ms))
    t = 0.0
    for r in rounds:
        t = _round_ms(ring, r, t, msg) if r.ahead is None else _ahead_round_ms(ring, r, r.ahead, t, msg)
    return t


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured."""
    return (predicted - measured) / measured if measured else math.nan
