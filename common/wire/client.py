"""The client API between a client (CLI, HTTP API) and the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from common.wire.errors import ProtocolError


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
    ref: str = ""  # the client's own id of this request (at most MAX_REF_CHARS), echoed in its chunks and reply


MAX_REF_CHARS = 64
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
    request_id: str = ""  # the scheduler's id of the request ("r7"); "" when it was never admitted
    ref: str = ""  # the request's GenerateRequest.ref (its ResumeRequest's for NOT_ADMITTED)


@dataclass(frozen=True)
class GenerateChunk:
    """Output committed since the last chunk of a streamed request; ``text`` never revises earlier text."""

    KIND: ClassVar[str] = "generate_chunk"
    request_id: str
    token_ids: tuple[int, ...]
    text: str
    ref: str = ""  # the request's GenerateRequest.ref


@dataclass(frozen=True)
class CancelRequest:
    """The client gives up every request it has running or queued; their state is freed everywhere."""

    KIND: ClassVar[str] = "cancel"


@dataclass(frozen=True)
class ResumeRequest:
    """After a scheduler restart: this client (its fixed ZeroMQ routing id) still waits for its request, and
    has ``received`` of its output tokens in chunks (of the request ``ref``); the restarted scheduler sends the
    rest, then the reply."""

    KIND: ClassVar[str] = "resume"
    received: int = 0
    ref: str = ""  # the GenerateRequest.ref of the request it waits for


class WrongReply(ProtocolError):
    """A chunk or reply of another request than the one the client waits for (refused, never handed over)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="wrong_reply")


def own_answer(msg: object, ref: str) -> GenerateChunk | GenerateReply:
    """``msg`` as the answer of the request ``ref`` this client waits for; a ProtocolError if it is no generate
    answer, a WrongReply if it belongs to another request."""
    if not isinstance(msg, GenerateChunk | GenerateReply):
        raise ProtocolError(f"expected a generate reply, got {getattr(msg, 'KIND', type(msg).__name__)}")
    if msg.ref != ref:
        raise WrongReply(f"a {msg.KIND} of request {msg.ref or '(no ref)'} reached the client waiting for {ref}")
    return msg


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
