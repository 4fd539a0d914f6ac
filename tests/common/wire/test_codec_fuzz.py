"""Bad input, fuzzed: every decoder (one per message kind) answers a message or a ProtocolError, never
another exception, for random bytes, byte-mutated valid frames, mutated headers (version, kind,
fields, dtype and shape), missing or extra frames and oversized messages.

Every random choice is a hypothesis draw, so a failing case shrinks to a small one. `make test` runs
1,000 cases per decoder; FLOWRING_FUZZ_CASES=10000 runs the deep fuzz (about 20 s of CPU per decoder)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import msgpack
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from common.wire.codec import _TYPES, Message, decode, encode
from common.wire.commands import EndRequest, Expand, Prune, Shutdown, StartRequest
from common.wire.errors import ProtocolError
from common.wire.reports import DraftReport, Fault, Heartbeat, Ready, StageStats, Verdict
from common.wire.ring import Features, Segment

pytestmark = pytest.mark.fuzz
CASES = int(os.environ.get("FLOWRING_FUZZ_CASES", "1000"))
FUZZ = settings(max_examples=CASES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_BYTES = 4096

# A few valid messages of every kind: the seeds that the mutations start from.
CORPUS: dict[str, list[Message]] = {
    "segment": [Segment("r1", 0, 2, 5, "tree", 3, (7, 8), (-1, 0), (10, 11), hidden=torch.randn(2, 4)),
                Segment("r1", 0, 0, 0, "prefill", 0, (1, 2, 3), (), (0, 1, 2), last_prefill=True),
                Segment("r2", 1, 1, 1, "tree", 0, (), (), ()),
                Segment("r3", 0, 0, 0, "tree", 0, (5,), (-1,), (9,), hidden=torch.ones(1, 3, dtype=torch.bfloat16))],
    "start": [StartRequest("r1", 0, (1, 2, 3), 16, 0.7, 3, DraftSettings(), 64, "chunk", 10.0, 1.5)],
    "prune": [Prune("r1", 4, 2, 1, (0, 1), (3, 4, 5), (9, 10), 10), Prune("r1", 5, 3, 2, (0,), (), (4,), 4),
              Prune("r1", 6, 4, 2, (0, 2), (3, 5), (7, 8), 8, known=6)],
    "expand": [Expand("r1", 6, 3)],
    "end": [EndRequest("r1", 7, "done")],
    "shutdown": [Shutdown(-1), Shutdown(12)],
    "verdict": [Verdict("r1", 3, 2, 1, "tree", (0, 2), (5, 6), 7, 4), Verdict("r1", 0, 0, 0, "prefill", next_token=3)],
    "draft_report": [DraftReport("r1", 2, 4, (5, 6), (0, 1), 2, 3.5)],
    "ready": [Ready("stage-1", 1234)],
    "heartbeat": [Heartbeat("stage-1", 1234, "board-2", 12.5, 1, 2**20, 4.25, {"messages_handled": 9})],
    "fault": [Fault("verifier", "r1", "boom"), Fault("stage-1", "", "commands #3..#5 lost", lost=(3, 5))],
    "stage_stats": [StageStats("stage-2", "r1", 12.5, 3, 40)],
    "generate": [GenerateRequest("hi", 8, 0.5, 1, True, (1, 2), "ar", 0.0, 0.0)],
    "generate_reply": [GenerateReply(True, "text", (1, 2), {"steps": 3, "services": {"s": {"busy_ms": 1.0}}}, "")],
    "status": [StatusRequest()],
    "features": [Features("r1", 5, torch.randn(2, 4)), Features("r2", 0, torch.ones(1, 3, dtype=torch.bfloat16))],
    "generate_chunk": [GenerateChunk("r1", (5, 6), "ab")],
    "cancel": [CancelRequest()],
    "resume": [ResumeRequest(), ResumeRequest(received=7)],
    "status_reply": [StatusReply(True, (ServiceHealth("stage", "stage-1", "h", 1, ("tcp://h:1",), (0, 4), True),),
                                 True)],
}

DTYPE_NAMES = ["float32", "bfloat16", "float16", "int64", "int32", "float64", "uint8", ""]
EDGE_INTS = [0, 1, -1, 2, 7, 2**31, 2**62, 2**63 - 1, -(2**63), 2**64 - 1]


def test_the_corpus_covers_every_kind() -> None:
    assert set(CORPUS) == set(_TYPES)
    for kind, seeds in CORPUS.items():
        assert all(kind == decode([bytes(f) for f in encode(m)]).KIND for m in seeds)


T = TypeVar("T")


class Draws:
    """The few ``random.Random`` calls the mutations make, each one a hypothesis draw (so it shrinks)."""

    def __init__(self, data: st.DataObject) -> None:
        self._draw = data.draw

    def randrange(self, start: int, stop: int | None = None) -> int:
        low, high = (0, start) if stop is None else (start, stop)
        return self._draw(st.integers(low, high - 1))

    def randint(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def random(self) -> float:
        return self._draw(st.floats(0.0, 1.0, exclude_max=True))

    def choice(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))

    def randbytes(self, n: int) -> bytes:
        return self._draw(st.binary(min_size=n, max_size=n))


def wild(rng: Draws, depth: int = 0) -> Any:
    """A value a hostile or broken peer might put anywhere in a header."""
    pick = rng.randrange(11 if depth < 2 else 8)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.choice(EDGE_INTS)
    if pick == 3:
        return rng.choice([0.5, -1e308, float("nan"), float("inf"), -0.0])
    if pick == 4:
        return rng.choice(["", "r1", "tree", "prefill", "\x00", "x" * 40, *DTYPE_NAMES, *_TYPES])
    if pick == 5:
        return rng.randbytes(rng.randrange(9))
    if pick in (6, 7):
        return rng.randrange(-3, 12)
    if pick in (8, 9):
        return [wild(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "top_k", "v", "", "kind"]): wild(rng, depth + 1) for _ in range(rng.randrange(3))}


def mangle(kind: str, rng: Draws) -> list[bytes]:
    """A valid message of ``kind``, damaged one of four ways."""
    frames = [bytes(f) for f in encode(rng.choice(CORPUS[kind]))]
    how = rng.randrange(4)
    if how == 0:  # bytes: set, insert, delete, truncate
        i = rng.randrange(len(frames))
        buf = bytearray(frames[i])
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(buf) + 1)
            op = rng.randrange(4)
            if op == 0 and at < len(buf):
                buf[at] = rng.randrange(256)
            elif op == 1:
                buf.insert(at, rng.randrange(256))
            elif op == 2 and at < len(buf):
                del buf[at]
            elif op == 3:
                del buf[at:]
        frames[i] = bytes(buf)
    elif how == 1:  # header: version, kind, field map, spec list, one field replaced or dropped
        header = msgpack.unpackb(frames[0])
        target = rng.choice(["v", "kind", "f", "t", "field", "field", "drop"])
        fields = header["f"]
        if target in ("field", "drop") and fields:
            name = rng.choice(sorted(fields))
            if target == "drop":
                del fields[name]
            else:
                fields[name] = wild(rng)
        elif target in ("v", "kind", "f", "t"):
            header[target] = wild(rng)
        frames[0] = msgpack.packb(header)
    elif how == 2:  # tensor specs: dtype and shape against the frame's size
        header = msgpack.unpackb(frames[0])
        shape = [rng.choice([*EDGE_INTS, 3, 4]) for _ in range(rng.randrange(4))]
        header["t"] = [[rng.choice(["hidden", "tokens", "x"]), rng.choice(DTYPE_NAMES), shape]]
        size = rng.choice([0, 4, 8, 16, 24, rng.randrange(64)])
        frames = [msgpack.packb(header), rng.randbytes(size)]
    else:  # frames: dropped, extra, swapped, oversized
        op = rng.randrange(4)
        if op == 0:
            del frames[rng.randrange(len(frames))]
        elif op == 1:
            frames.insert(rng.randrange(len(frames) + 1), rng.randbytes(rng.randrange(32)))
        elif op == 2 and len(frames) > 1:
            frames[0], frames[1] = frames[1], frames[0]
        else:
            frames.append(bytes(rng.randint(MAX_BYTES, 2 * MAX_BYTES)))
    return frames


def _decodes_or_refuses(frames: list[bytes]) -> None:
    try:
        msg = decode(frames, MAX_BYTES)
    except ProtocolError as exc:
        assert exc.reason in ("malformed", "version", "unknown_kind", "oversized")
        return
    assert type(msg) in _TYPES.values()


@pytest.mark.parametrize("kind", sorted(CORPUS))
@FUZZ
@given(data=st.data())
def test_every_decoder_survives_mangled_frames(kind: str, data: st.DataObject) -> None:
    _decodes_or_refuses(mangle(kind, Draws(data)))


@FUZZ
@given(data=st.data())
def test_random_bytes_are_refused(data: st.DataObject) -> None:
    rng = Draws(data)
    _decodes_or_refuses([rng.randbytes(rng.randrange(256)) for _ in range(rng.randint(1, 4))])


def test_oversized_messages_are_refused_by_reason() -> None:
    frames = [bytes(f) for f in encode(CORPUS["segment"][0])]
    size = sum(len(f) for f in frames)
    with pytest.raises(ProtocolError) as refused:
        decode(frames, max_bytes=size - 1)
    assert refused.value.reason == "oversized"
    assert decode(frames, max_bytes=size).KIND == "segment"
