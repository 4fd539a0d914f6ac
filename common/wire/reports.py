"""Reports from the ring services to the scheduler: verdicts, draft reports, liveness, faults, stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from common.wire.errors import member


class VerdictKind(StrEnum):
    """What a verdict decides: the prompt's first token, a tree's accepted path, or nothing (pruned empty)."""

    PREFILL = "prefill"
    TREE = "tree"
    NOOP = "noop"


@dataclass(frozen=True)
class Verdict:
    """The verifier's decision on one segment.

    kind "prefill": ``next_token`` is the first output token. kind "tree": ``accepted`` is the path of
    tree indices (numbering ``epoch``) that matched the base model, root first, and ``next_token`` the
    token the base model emits after it. kind "noop": the segment was pruned empty on its way.
    """

    KIND: ClassVar[str] = "verdict"
    request_id: str
    seq: int
    epoch: int
    round: int
    kind: VerdictKind
    accepted: tuple[int, ...] = ()
    accepted_tokens: tuple[int, ...] = ()
    next_token: int = -1
    rows: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", member(VerdictKind, self.kind, "verdict kind"))  # a str off the wire


@dataclass(frozen=True)
class DraftReport:
    """Nodes the drafter sent into the ring (numbering ``epoch``); it leaves before their segments do.

    The scheduler brings a report of an older epoch forward through the prunes since (a node survives
    iff its parent does); ``draft_ms``: drafting time since the last report.
    """

    KIND: ClassVar[str] = "draft_report"
    request_id: str
    epoch: int
    first: int
    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    segments_sent: int
    draft_ms: float


@dataclass(frozen=True)
class Ready:
    KIND: ClassVar[str] = "ready"
    service: str
    pid: int


@dataclass(frozen=True)
class Heartbeat:
    """A ring service is alive: sent every ``heartbeat_interval_s`` from its event loop."""

    KIND: ClassVar[str] = "heartbeat"
    service: str
    pid: int
    host: str  # the machine's host name
    uptime_s: float
    in_flight: int  # requests started here and not yet ended
    kv_cache_bytes: int
    last_step_ms: float  # how long the last segment took to handle
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    """A service could not handle a message; the scheduler fails the request with this reason.

    With ``lost`` (the first and last ``cmd_seq`` of a gap in the service's command stream) and no
    ``request_id``: the scheduler fails the requests those lost commands belonged to.
    """

    KIND: ClassVar[str] = "fault"
    service: str
    request_id: str
    error: str
    lost: tuple[int, ...] = ()


@dataclass(frozen=True)
class StageStats:
    """Per-request busy time of one service, sent when the request ends."""

    KIND: ClassVar[str] = "stage_stats"
    service: str
    request_id: str
    busy_ms: float
    forwards: int
    rows: int
    spans: tuple[int, ...] = ()  # flat (kind, start_us, dur_us) triples when the request was traced
    feature_bytes: int = 0  # Features sent to the drafter (verifier of a draft-head cluster)
