"""Wire messages of the flowring ring and their one codec.

Every message is a frozen dataclass tagged by ``KIND``. On the wire a message is a multipart ZeroMQ
message: frame 0 is a msgpack header ``{"v": version, "kind": tag, "f": fields, "t": tensor specs}``,
frames 1.. are the raw bytes of the tensor fields (dtype by name, shape in the header), sent without
copies. A wrong version, an unknown tag or a malformed frame is a :class:`ProtocolError`.

Vocabulary (FlowSpec): a *draft tree* is rooted at the last sampled token; its nodes are numbered in
score order so every parent precedes its children. A *segment* is a contiguous range of tree nodes
streamed through the ring. A *prune event* retires the verified segment: the *accepted* path becomes
committed context, the next token's subtree is *kept* and renumbered, everything else is dropped.
Each prune event raises the request's *epoch*; a segment is tagged with the epoch whose numbering its
node indices use, so every receiver can bring it up to date without a global barrier.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np
import torch

PROTOCOL_VERSION = 3  # 2: Heartbeat; StatusReply carries ServiceHealth rows. 3: Prune.known


class ProtocolError(ValueError):
    """A frame that cannot be decoded into a known message of this protocol version.

    ``reason`` names the kind of rejection for metrics: malformed, version, unknown_kind, oversized.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


# ---------------------------------------------------------------------------------------------- ring data
@dataclass(frozen=True)
class Segment:
    """Rows travelling the ring drafter -> stage 1 -> ... -> stage N -> verifier.

    ``phase`` "prefill": prompt rows at absolute positions, appended to committed context (causal).
    ``phase`` "tree": draft-tree nodes ``first .. first+len-1`` in the numbering of ``epoch``;
    ``parents[i]`` is a tree index (-1: the node is the root, attached to committed context).
    Zero rows is an EMPTY bubble: it keeps one message per slot so sequence numbers stay dense.
    ``hidden`` is absent on the drafter's output (stage 1 embeds ``tokens``).
    """

    KIND: ClassVar[str] = "segment"
    request_id: str
    round: int
    epoch: int
    seq: int
    phase: str
    first: int
    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    positions: tuple[int, ...]
    last_prefill: bool = False
    closes_tree: bool = False  # last segment of a round's fill tree (Chunk-PP verifies the tree whole)
    hidden: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if self.phase not in ("prefill", "tree"):
            raise ProtocolError(f"segment phase {self.phase!r} is neither 'prefill' nor 'tree'")
        if len(self.positions) != n or (self.phase == "tree" and len(self.parents) != n):
            raise ProtocolError("segment tokens, parents and positions disagree in length")
        if self.hidden is not None and (self.hidden.dim() != 2 or self.hidden.shape[0] != n):
            raise ProtocolError(f"segment hidden shape {tuple(self.hidden.shape)} does not match {n} rows")

    @property
    def rows(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Features:
    """Final-normed base hidden states of committed tokens, verifier -> drafter (for a draft head).

    Rows are the tokens at context positions ``position .. position + n - 1``: every prompt chunk's
    rows after prefill, and a verdict's accepted path (root first).
    """

    KIND: ClassVar[str] = "features"
    request_id: str
    position: int
    hidden: torch.Tensor

    def __post_init__(self) -> None:
        if self.hidden.dim() != 2:
            raise ProtocolError(f"features must be [rows, hidden], got {tuple(self.hidden.shape)}")


# ------------------------------------------------------------------------------------ scheduler commands
@dataclass(frozen=True)
class DraftSettings:
    """Tree shape: the fill tree of a new round and each expansion."""

    top_k: int = 4
    fill_nodes: int = 24
    fill_depth: int = 5
    fill_segments: int = 0  # 0: one per pipeline hop (stages + verifier)
    segment_cap: int = 16
    expand_nodes: int = 12
    expand_depth: int = 4
    pipedec_width: int = 8  # nodes per tree level in pipedec mode
    expansion: str = "grow"  # flowspec: "grow" (best leaves, one draft forward) or "redraft" (from the root)
    expand_leaves: int = 4  # "grow": leaves expanded per level
    grow_levels: int = 3  # "grow": levels added per step, one draft forward each (best of 1-3 measured)
    adaptive: bool = True  # "grow": levels and width follow the measured acceptance (common.tree_policy)
    node_cap: int = 128  # "grow": the most nodes a tree holds (pre-drafting stops there)


@dataclass(frozen=True)
class StartRequest:
    """Begin a request: every service resets its per-request state."""

    KIND: ClassVar[str] = "start"
    request_id: str
    cmd_seq: int
    prompt: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    seed: int = 0
    draft: DraftSettings = field(default_factory=DraftSettings)
    prefill_chunk: int = 64
    mode: str = "flowspec"
    link_mbps: float = 0.0  # emulated bandwidth of every hop for this request (0: unshaped)
    link_latency_ms: float = 0.0  # emulated one-way latency of every hop
    trace: bool = False  # record this request's timeline (common.observability.trace)


@dataclass(frozen=True)
class Prune:
    """Prune event number ``epoch``: applies to tree numbering ``epoch - 1``.

    ``accepted``: the verified path (root first), now committed context. ``keep``: the next token's
    node and its descendants, ascending; node ``keep[i]`` becomes node ``i``. Empty ``keep`` ends the
    round (the next token is not in the tree): the next round starts from ``next_token``.
    ``new_tokens``: output tokens this event adds (accepted after the root, then ``next_token``).
    ``known``: the size of the tree the scheduler decided over. A node at or past it was drafted but
    not yet reported: it survives iff its parent survives, numbered after the kept nodes in index
    order (:class:`common.tree.Renumbering`); -1: every node was known.
    """

    KIND: ClassVar[str] = "prune"
    request_id: str
    cmd_seq: int
    epoch: int
    round: int
    accepted: tuple[int, ...]
    keep: tuple[int, ...]
    new_tokens: tuple[int, ...]
    next_token: int
    known: int = -1

    @property
    def ends_round(self) -> bool:
        return not self.keep


@dataclass(frozen=True)
class Expand:
    """A credit: one segment left the ring, the drafter may send one more (a new round's fill after a round end).

    The drafter drafts ahead without credits; credits only pace what it sends.
    """

    KIND: ClassVar[str] = "expand"
    request_id: str
    cmd_seq: int
    epoch: int


@dataclass(frozen=True)
class EndRequest:
    KIND: ClassVar[str] = "end"
    request_id: str
    cmd_seq: int
    reason: str


@dataclass(frozen=True)
class Shutdown:
    KIND: ClassVar[str] = "shutdown"
    cmd_seq: int


# ----------------------------------------------------------------------------------- reports to scheduler
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
    kind: str
    accepted: tuple[int, ...] = ()
    accepted_tokens: tuple[int, ...] = ()
    next_token: int = -1
    rows: int = 0


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
    """A service could not handle a message; the scheduler fails the request with this reason."""

    KIND: ClassVar[str] = "fault"
    service: str
    request_id: str
    error: str


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


# ------------------------------------------------------------------------------------------ client API
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


MODES = ("ar", "chunk", "pipedec", "flowspec")
"""Decoding modes on one cluster. ``ar``: pipelined autoregressive, no draft. ``chunk``: one draft
tree per round, streamed in chunks and verified whole (Chunk-PP). ``pipedec``: the tree grows one
level per step, verified and pruned step by step (PipeDec). ``flowspec``: score-ordered segments,
step-wise verification, pruning and re-drafted expansion (FlowSpec)."""


Message = (
    Segment | Features | StartRequest | Prune | Expand | EndRequest | Shutdown | Verdict | DraftReport | Ready
    | Heartbeat | Fault | StageStats | GenerateRequest | GenerateReply | GenerateChunk | CancelRequest
    | StatusRequest | StatusReply
)
_TYPES: dict[str, type] = {
    t.KIND: t
    for t in (
        Segment, Features, StartRequest, Prune, Expand, EndRequest, Shutdown, Verdict, DraftReport, Ready,
        Heartbeat, Fault, StageStats, GenerateRequest, GenerateReply, GenerateChunk, CancelRequest, StatusRequest,
        StatusReply,
    )
}
# Field annotation -> the dataclass its value (or each item of its tuple) is rebuilt as.
_NESTED: dict[str, type] = {"DraftSettings": DraftSettings}
_NESTED_TUPLES: dict[str, type] = {"tuple[ServiceHealth, ...]": ServiceHealth}


def _tensor_frame(t: torch.Tensor) -> memoryview:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    # bfloat16 has no numpy dtype: ship its bytes; the header keeps the real dtype name.
    return memoryview(t.view(torch.uint8).numpy() if t.dtype == torch.bfloat16 else t.numpy()).cast("B")


def encode(msg: Message) -> list[bytes | memoryview]:
    """Message -> multipart frames (header first, then one raw frame per tensor field)."""
    fields: dict[str, Any] = {}
    specs: list[list[Any]] = []
    frames: list[bytes | memoryview] = []
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, torch.Tensor):
            if value.dtype not in _DTYPE_NAMES:
                raise ProtocolError(f"cannot send tensor of dtype {value.dtype}")
            specs.append([f.name, _DTYPE_NAMES[value.dtype], list(value.shape)])
            frames.append(_tensor_frame(value))
        elif dataclasses.is_dataclass(value):
            fields[f.name] = dataclasses.asdict(value)
        elif str(f.type) in _NESTED_TUPLES:
            fields[f.name] = [dataclasses.asdict(v) for v in value]
        else:
            fields[f.name] = value
    header = msgpack.packb({"v": PROTOCOL_VERSION, "kind": msg.KIND, "f": fields, "t": specs})
    return [header, *frames]


def decode(frames: list[Any], max_bytes: int = 0) -> Message:
    """Multipart frames -> message; any malformation is a ProtocolError, never another exception.

    ``max_bytes`` > 0 rejects a message whose frames add up to more (reason ``oversized``).
    """
    if not frames:
        raise ProtocolError("empty message")
    if max_bytes > 0:
        size = sum(memoryview(_as_bytes(f)).nbytes for f in frames)
        if size > max_bytes:
            raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_bytes}", reason="oversized")
    try:
        header = msgpack.unpackb(_as_bytes(frames[0]))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"undecodable header: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("message header is not a map")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, this service speaks {PROTOCOL_VERSION}",
                            reason="version")
    kind = header.get("kind")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}", reason="unknown_kind")
    fields, specs = header.get("f", {}), header.get("t", [])
    if not isinstance(fields, dict) or not isinstance(specs, list):
        raise ProtocolError(f"{cls.KIND}: malformed header")
    if len(specs) != len(frames) - 1:
        raise ProtocolError(f"{cls.KIND}: {len(specs)} tensor specs but {len(frames) - 1} frames")
    try:
        fields = dict(fields)
        for spec, frame in zip(specs, frames[1:], strict=True):
            name, dtype_name, shape = spec
            fields[name] = _tensor_from_frame(frame, dtype_name, shape)
        return _build(cls, fields)
    except ProtocolError:
        raise
    except (TypeError, ValueError, AttributeError, RuntimeError, OverflowError) as exc:
        raise ProtocolError(f"{cls.KIND}: malformed fields: {exc}") from exc


def _build(cls: type, fields: dict[str, Any]) -> Any:
    """Checked construction of ``cls`` from decoded fields (nested dataclasses rebuilt first)."""
    declared = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for name, value in list(fields.items()):
        annotation = declared.get(name, "")
        if annotation in _NESTED and isinstance(value, dict):
            fields[name] = _build(_NESTED[annotation], dict(value))
        elif annotation in _NESTED_TUPLES and isinstance(value, list):
            item = _NESTED_TUPLES[annotation]
            if not all(isinstance(v, dict) for v in value):
                raise ProtocolError(f"{_kind(cls)}: field {name!r} holds a non-map item")
            fields[name] = tuple(_build(item, dict(v)) for v in value)
        elif isinstance(value, list):
            fields[name] = tuple(value)
    _check_fields(cls, fields)
    return cls(**fields)


def _kind(cls: type) -> str:
    return getattr(cls, "KIND", cls.__name__)


# Field annotation (as written above) -> check of a decoded value.
_CHECKS: dict[str, Any] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: type(v) is int,
    "float": lambda v: type(v) in (int, float),
    "bool": lambda v: type(v) is bool,
    "tuple[int, ...]": lambda v: isinstance(v, tuple) and all(type(x) is int for x in v),
    "tuple[str, ...]": lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
    "torch.Tensor | None": lambda v: v is None or isinstance(v, torch.Tensor),
    "dict[str, Any]": lambda v: isinstance(v, dict),
    "dict[str, int]": lambda v: isinstance(v, dict) and all(isinstance(k, str) and type(x) is int
                                                            for k, x in v.items()),
    "DraftSettings": lambda v: isinstance(v, DraftSettings),
    "tuple[ServiceHealth, ...]": lambda v: isinstance(v, tuple) and all(isinstance(x, ServiceHealth) for x in v),
}


def _check_fields(cls: type, fields: dict[str, Any]) -> None:
    declared = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in fields.items():
        f = declared.get(name)
        if f is None:
            raise ProtocolError(f"{_kind(cls)}: unexpected field {name!r}")
        check = _CHECKS.get(str(f.type))
        if check is not None and not check(value):
            raise ProtocolError(f"{_kind(cls)}: field {name!r} has the wrong type ({type(value).__name__})")


def _as_bytes(frame: Any) -> bytes | memoryview:
    return frame.buffer if hasattr(frame, "buffer") else frame


def _tensor_from_frame(frame: Any, dtype_name: str, shape: list[int]) -> torch.Tensor:
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise ProtocolError(f"unknown tensor dtype {dtype_name!r}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and 0 <= d < 2**40 for d in shape):
        raise ProtocolError(f"tensor shape {shape!r} is not a list of at most 8 sizes")
    buf = _as_bytes(frame)
    raw = np.frombuffer(buf, dtype=np.uint8)
    expected = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    if raw.size != expected:
        raise ProtocolError(f"tensor frame of {raw.size} bytes, expected {expected} for {dtype_name}{shape}")
    if raw.size == 0:
        return torch.empty(shape, dtype=dtype)
    # Zero-copy view of the received frame. The frame is read-only; receivers never write into a
    # received tensor (they index-select rows or run a forward that allocates), so that is safe.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape)
