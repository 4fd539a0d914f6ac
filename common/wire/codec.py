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
from typing import Any

import msgpack
import numpy as np
import torch

from common.models.dtypes import DTYPE_BYTES, torch_dtype
from common.speculation.modes import DraftSettings
from common.wire.client import (
    CancelRequest,
    GenerateChunk,
    GenerateReply,
    GenerateRequest,
    ResumeRequest,
    ServiceHealth,
    StatusReply,
    StatusRequest,
)
from common.wire.commands import EndRequest, Expand, Prune, Shutdown, StartRequest
from common.wire.errors import ProtocolError
from common.wire.reports import DraftReport, Fault, Heartbeat, Ready, StageStats, Verdict
from common.wire.ring import Features, Segment

# 2: Heartbeat; StatusReply carries ServiceHealth rows. 3: Prune.known. 4: Fault.lost. 5: ResumeRequest.
# 6: GenerateRequest.ref, echoed in GenerateChunk, GenerateReply (with its request_id) and ResumeRequest.
PROTOCOL_VERSION = 6


_DTYPES = {name: torch_dtype(name) for name in DTYPE_BYTES}  # the one table (common.models.dtypes), looked up
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


Message = (
    Segment | Features | StartRequest | Prune | Expand | EndRequest | Shutdown | Verdict | DraftReport | Ready
    | Heartbeat | Fault | StageStats | GenerateRequest | GenerateReply | GenerateChunk | CancelRequest | ResumeRequest
    | StatusRequest | StatusReply
)


_TYPES: dict[str, type[Message]] = {
    t.KIND: t
    for t in (
        Segment, Features, StartRequest, Prune, Expand, EndRequest, Shutdown, Verdict, DraftReport, Ready,
        Heartbeat, Fault, StageStats, GenerateRequest, GenerateReply, GenerateChunk, CancelRequest, ResumeRequest, StatusRequest,
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
    return (t.view(torch.uint8).numpy() if t.dtype == torch.bfloat16 else t.numpy()).data.cast("B")


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
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
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


def _build(cls: type[Message], fields: dict[str, Any]) -> Any:
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
