"""The client API between a client (CLI, HTTP API) and the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class GenerateRequest:
    KIND: ClassVar[str] = "generate"
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    raw: bool = False
    prompt_ids: tuple[int, ...] = ()
    mode: str = ""  # "": the cluster's default mode (chosen for the machine at `flowring up`)
    link_mbps: float = 0.0
    link_latency_ms: float = 0.0
    trace: bool = False  # return every service's timeline in the reply's stats
    stream: bool = False  # send a GenerateChunk as tokens are committed, then the GenerateReply


REPLY_CODES = ("", "invalid", "busy", "cancelled", "timeout", "failed")
NOT_ADMITTED = "the scheduler restarted and holds no request of this client"  # a client with no output resends


"""``GenerateReply.code``: "" on success; else why it failed (``busy``: retry after ``retry_after_s``)."""


@dataclass(frozen=True)
class GenerateReply:
    KIND: ClassVar[str] = "generate_reply"
    ok: bool
    text: str = ""
    token_ids: tuple[int, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    code: str = ""  # one of REPLY_CODES
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class GenerateChunk:
    """Output committed since the last chunk of a streamed request; ``text`` never revises earlier text."""

    KIND: ClassVar[str] = "generate_chunk"
    request_id: str
    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class CancelRequest:
    """The client gives up every request it has running or queued; their state is freed everywhere."""

    KIND: ClassVar[str] = "cancel"


@dataclass(frozen=True)
class ResumeRequest:
    """After a scheduler restart: this client (its fixed ZeroMQ routing id) still waits for its request, and
    has ``received`` of its output tokens in chunks; the restarted scheduler sends the rest, then the reply."""

    KIND: ClassVar[str] = "resume"
    received: int = 0


@dataclass(frozen=True)
class StatusRequest:
    KIND: ClassVar[str] = "status"


@dataclass(frozen=True)
class ServiceHealth:
    """One service as the scheduler last heard it (a row of ``flowring status``)."""

    role: str  # scheduler, drafter, stage or verifier
    name: str
    host: str
    pid: int = 0  # 0: never heard from
    endpoints: tuple[str, ...] = ()  # tcp://host:port it binds
    layers: tuple[int, ...] = ()  # stages: [first, end) of its decoder layers
    healthy: bool = False  # heard within the liveness timeout
    last_seen_s: float = -1.0  # seconds since its last heartbeat; -1: never
    uptime_s: float = 0.0
    in_flight: int = 0
    kv_cache_bytes: int = 0
    last_step_ms: float = 0.0
    metrics: str = ""  # its Prometheus endpoint, "" when off


@dataclass(frozen=True)
class StatusReply:
    """``ready``: every ring service is healthy."""

    KIND: ClassVar[str] = "status_reply"
    ready: bool
    services: tuple[ServiceHealth, ...] = ()
    busy: bool = False
