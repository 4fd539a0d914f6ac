"""The wire codec: every message round-trips; every malformation is a ProtocolError."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.speculation.modes import DraftSettings, Mode
from common.wire.client import (
    REPLY_CODES,
    CancelRequest,
    GenerateChunk,
    GenerateReply,
    GenerateRequest,
    ResumeRequest,
    ServiceHealth,
    StatusReply,
    StatusRequest,
)
from common.wire.codec import PROTOCOL_VERSION, decode, encode
from common.wire.commands import EndRequest, Expand, Prune, Shutdown, StartRequest
from common.wire.errors import ProtocolError
from common.wire.reports import DraftReport, Fault, Heartbeat, Ready, StageStats, Verdict, VerdictKind
from common.wire.ring import Features, Segment

ROUNDTRIP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64]

ints = st.integers(-(2**63), 2**64 - 1)
small = st.integers(-5, 1000)
floats = st.floats(allow_nan=False)
texts = st.text(max_size=20)
int_tuples = st.lists(ints, max_size=12).map(tuple)
# JSON-like values for the free-form dicts; sequences as lists (msgpack has no tuple)
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | texts | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_dicts = st.dictionaries(texts, json_values, max_size=4)


@st.composite
def tensors(draw: st.DrawFn, rows: int, allow_empty: bool = True) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    width = draw(st.integers(0 if allow_empty else 1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.int64:
        t = torch.randint(-(2**62), 2**62, (rows, width), generator=gen)
    else:
        t = (torch.randn(rows, width, generator=gen) * 100).to(dtype)
    if draw(st.booleans()) and rows > 1 and width > 1:  # non-contiguous source
        t = t.t().contiguous().t()
    return t


@st.composite
def segments(draw: st.DrawFn, allow_empty_tensor: bool = False) -> Segment:
    n = draw(st.integers(0 if allow_empty_tensor else 1, 10))
    phase = draw(st.sampled_from(["prefill", "tree"]))
    parents_len = n if phase == "tree" else draw(st.sampled_from([0, n]))
    hidden = None
    if draw(st.booleans()):
        hidden = draw(tensors(n, allow_empty=allow_empty_tensor))
    return Segment(
        request_id=draw(texts), round=draw(small), epoch=draw(small), seq=draw(ints), phase=phase,
        first=draw(small), tokens=tuple(draw(st.lists(ints, min_size=n, max_size=n))),
        parents=tuple(draw(st.lists(small, min_size=parents_len, max_size=parents_len))),
        positions=tuple(draw(st.lists(small, min_size=n, max_size=n))),
        last_prefill=draw(st.booleans()), hidden=hidden,
    )


draft_settings = st.builds(
    DraftSettings, top_k=small, fill_nodes=small, fill_depth=small, fill_segments=small, segment_cap=small,
    expand_nodes=small, expand_depth=small, adaptive=st.booleans(), node_cap=small,
)
@st.composite
def features(draw: st.DrawFn) -> Features:
    return Features(request_id=draw(texts), position=draw(small), hidden=draw(tensors(draw(st.integers(1, 6)))))


service_health = st.builds(
    ServiceHealth, role=texts, name=texts, host=texts, pid=ints, endpoints=st.lists(texts, max_size=3).map(tuple),
    layers=st.lists(small, max_size=2).map(tuple), healthy=st.booleans(), last_seen_s=floats, uptime_s=floats,
    in_flight=ints, kv_cache_bytes=ints, last_step_ms=floats, metrics=texts,
)
messages = st.one_of(
    segments(),
    features(),
    st.builds(StartRequest, request_id=texts, cmd_seq=ints, prompt=int_tuples, max_new_tokens=ints,
              temperature=floats, seed=ints, draft=draft_settings, prefill_chunk=ints,
              mode=st.sampled_from(list(Mode))),
    st.builds(Prune, request_id=texts, cmd_seq=ints, epoch=ints, round=ints, accepted=int_tuples,
              keep=int_tuples, new_tokens=int_tuples, next_token=ints, known=ints),
    st.builds(Expand, request_id=texts, cmd_seq=ints, epoch=ints),
    st.builds(EndRequest, request_id=texts, cmd_seq=ints, reason=texts),
    st.builds(Shutdown, cmd_seq=ints),
    st.builds(Verdict, request_id=texts, seq=ints, epoch=ints, round=ints, kind=st.sampled_from(list(VerdictKind)),
              accepted=int_tuples, accepted_tokens=int_tuples, next_token=ints, rows=ints),
    st.builds(DraftReport, request_id=texts, epoch=ints, first=ints, tokens=int_tuples, parents=int_tuples,
              segments_sent=ints, draft_ms=floats),
    st.builds(Ready, service=texts, pid=ints),
    st.builds(Fault, service=texts, request_id=texts, error=texts),
    st.builds(StageStats, service=texts, request_id=texts, busy_ms=floats, forwards=ints, rows=ints,
              feature_bytes=ints),
    st.builds(GenerateRequest, prompt=texts, max_new_tokens=ints, temperature=floats, seed=ints,
              raw=st.booleans(), prompt_ids=int_tuples, stream=st.booleans()),
    st.builds(GenerateReply, ok=st.booleans(), text=texts, token_ids=int_tuples, stats=json_dicts, error=texts,
              code=st.sampled_from(REPLY_CODES), retry_after_s=floats),
    st.builds(GenerateChunk, request_id=texts, token_ids=int_tuples, text=texts),
    st.just(CancelRequest()),
    st.builds(ResumeRequest, received=st.integers(0, 2**31)),
    st.just(StatusRequest()),
    st.builds(Heartbeat, service=texts, pid=ints, host=texts, uptime_s=floats, in_flight=ints, kv_cache_bytes=ints,
              last_step_ms=floats, counters=st.dictionaries(texts, ints, max_size=4)),
    st.builds(StatusReply, ready=st.booleans(), services=st.lists(service_health, max_size=3).map(tuple),
              busy=st.booleans()),
)


def assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor), f.name
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            assert torch.equal(x, y), f.name
        else:
            assert x == y, f.name
            assert type(x) is type(y) or isinstance(x, bool | int | float), f.name


def wire(frames: list) -> list[bytes]:
    """What a receiver gets: every frame as bytes."""
    return [bytes(f) for f in frames]


# ------------------------------------------------------------------------------------------- round trip
@ROUNDTRIP
@given(messages)
def test_roundtrip_every_message(msg) -> None:
    frames = encode(msg)
    assert_same(decode(wire(frames)), msg)
    assert_same(decode(frames), msg)  # memoryview frames decode too
    if not any(isinstance(getattr(msg, f.name), torch.Tensor) for f in dataclasses.fields(msg)):
        assert decode(wire(frames)) == msg


def test_every_message_type_is_covered() -> None:
    from common.wire.codec import _TYPES

    covered = {
        Segment, Features, StartRequest, Prune, Expand, EndRequest, Shutdown, Verdict, DraftReport, Ready, Heartbeat,
        Fault, StageStats, GenerateRequest, GenerateReply, GenerateChunk, CancelRequest, ResumeRequest, StatusRequest,
        StatusReply,
    }
    assert set(_TYPES.values()) == covered


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tensor_roundtrip_exact_bits(dtype: torch.dtype) -> None:
    if dtype == torch.int64:
        hidden = torch.tensor([[0, -1, 2**63 - 1], [-(2**63), 5, 7]], dtype=dtype)
    else:
        hidden = torch.tensor([[0.0, -0.0, float("inf")], [-float("inf"), 1e-3, -65504.0]]).to(dtype)
    seg = Segment("r", 0, 0, 0, "tree", 0, (1, 2), (-1, 0), (5, 6), hidden=hidden)
    frames = encode(seg)
    assert len(frames) == 2
    got = decode(wire(frames))
    assert got.hidden.dtype == dtype
    assert torch.equal(got.hidden.view(torch.uint8) if dtype != torch.int64 else got.hidden,
                       hidden.view(torch.uint8) if dtype != torch.int64 else hidden)


def test_bubble_roundtrip() -> None:
    bubble = Segment("r", 1, 2, 3, "tree", 0, (), (), ())
    assert decode(wire(encode(bubble))) == bubble


@pytest.mark.parametrize("shape", [(0, 4), (0, 0), (2, 0)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_element_tensor_roundtrip(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    rows = shape[0]
    seg = Segment("r", 0, 0, 0, "tree", 0, (7,) * rows, (-1,) * rows, (0,) * rows,
                  hidden=torch.zeros(shape, dtype=dtype))
    got = decode(wire(encode(seg)))
    assert got.hidden.dtype == dtype and got.hidden.shape == shape


def test_zero_row_tensor_decodes() -> None:
    """The decoder side of a 0-row tensor works (a hand-built frame list)."""
    header = _header("segment", _SEG_FIELDS | {"tokens": [], "parents": [], "positions": []},
                     [["hidden", "bfloat16", [0, 4]]])
    got = decode([header, b""])
    assert got.hidden.dtype == torch.bfloat16 and got.hidden.shape == (0, 4)


def test_decoded_tensor_is_usable() -> None:
    hidden = torch.randn(3, 4)
    got = decode(wire(encode(Segment("r", 0, 0, 0, "tree", 0, (1, 2, 3), (-1, 0, 0), (0, 1, 1),
                                     hidden=hidden))))
    assert torch.equal(got.hidden[[0, 2]] * 2, hidden[[0, 2]] * 2)


# ------------------------------------------------------------------------------------------ malformation
_SEG_FIELDS = {
    "request_id": "r", "round": 0, "epoch": 0, "seq": 0, "phase": "tree", "first": 0,
    "tokens": [1, 2], "parents": [-1, 0], "positions": [0, 1],
}


def _header(kind: Any, fields: Any, specs: Any = (), version: Any = PROTOCOL_VERSION) -> bytes:
    return msgpack.packb({"v": version, "kind": kind, "f": fields, "t": list(specs)})


def _good_segment_frames() -> list[bytes]:
    return wire(encode(Segment("r", 0, 0, 0, "tree", 0, (1, 2), (-1, 0), (0, 1), hidden=torch.ones(2, 3))))


def raises_protocol_error(frames: list) -> None:
    with pytest.raises(ProtocolError):
        decode(frames)


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, None, "2", [2], -1])
def test_wrong_version(version: Any) -> None:
    raises_protocol_error([_header("shutdown", {"cmd_seq": 0}, version=version)])


def test_missing_version() -> None:
    raises_protocol_error([msgpack.packb({"kind": "shutdown", "f": {"cmd_seq": 0}, "t": []})])


@pytest.mark.parametrize("kind", ["nope", "", None, 3, "Shutdown"])
def test_unknown_kind(kind: Any) -> None:
    raises_protocol_error([_header(kind, {"cmd_seq": 0})])


def test_truncated_tensor_frame() -> None:
    header, frame = _good_segment_frames()
    raises_protocol_error([header, frame[:-1]])
    raises_protocol_error([header, frame[:5]])
    raises_protocol_error([header, b""])
    raises_protocol_error([header, frame + b"\0"])


def test_truncated_header() -> None:
    header, frame = _good_segment_frames()
    for cut in (1, len(header) // 2, len(header) - 1):
        raises_protocol_error([header[:cut], frame])


@pytest.mark.parametrize(
    "header",
    [b"", b"\xc1", b"\xff\xff\xff", b"\x92\x01\x02", b"\x01", b"plain text", b"\x81\x01\x01", b"\x80\x00"],
)
def test_garbage_header(header: bytes) -> None:
    raises_protocol_error([header])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(st.binary(max_size=16), max_size=2))
def test_random_bytes_are_protocol_errors(header: bytes, rest: list[bytes]) -> None:
    raises_protocol_error([header, *rest])


def test_extra_and_missing_frames() -> None:
    header, frame = _good_segment_frames()
    raises_protocol_error([header, frame, frame])
    raises_protocol_error([header])
    shutdown = wire(encode(Shutdown(3)))
    raises_protocol_error([*shutdown, b""])
    raises_protocol_error([*shutdown, b"x"])


def test_empty_message() -> None:
    raises_protocol_error([])


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("shutdown", {"cmd_seq": 0, "extra": 1}),
        ("segment", _SEG_FIELDS | {"colour": "red"}),
        ("start", {"request_id": "r", "cmd_seq": 0, "prompt": [1], "max_new_tokens": 2, "KIND": "start"}),
        ("status", {"x": None}),
    ],
)
def test_unexpected_field(kind: str, fields: dict) -> None:
    with pytest.raises(ProtocolError, match="unexpected field"):
        decode([_header(kind, fields)])


def test_unexpected_tensor_field() -> None:
    header = _header("shutdown", {"cmd_seq": 0}, [["weights", "float32", [1]]])
    raises_protocol_error([header, b"\0\0\0\0"])


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("shutdown", {}),  # missing required field
        ("expand", {"request_id": "r", "cmd_seq": 0}),
        ("segment", _SEG_FIELDS | {"phase": "decode"}),
        ("segment", _SEG_FIELDS | {"positions": [0]}),
        ("segment", _SEG_FIELDS | {"tokens": 5}),
        ("start", {"request_id": "r", "cmd_seq": 0, "prompt": [1], "max_new_tokens": 2, "draft": {"bad": 1}}),
    ],
)
def test_malformed_fields(kind: str, fields: dict) -> None:
    raises_protocol_error([_header(kind, fields)])


@pytest.mark.parametrize(
    ("spec", "nbytes"),
    [
        (["hidden", "float64", [2, 1]], 16),  # dtype not in the protocol
        (["hidden", "float32", [2, -1]], 8),
        (["hidden", "float32", [-2, 0]], 0),
        (["hidden", "float32", "ab"], 8),
        (["hidden", "float32"], 8),
        (["hidden", "float32", [3, 1]], 12),  # rows disagree with tokens
        (["hidden", "float32", [2]], 8),  # not 2-D
        (["hidden", None, [2, 1]], 8),
        (["hidden", ["float32"], [2, 1]], 8),
        ("hidden", 8),
        (["hidden", "float32", [2**64 - 1]], 8),
        (["hidden", "float32", [2**62, 4, 2]], 0),  # element count wraps to 0 in int64
        (["hidden", "float32", [2**62, 4]], 0),
    ],
)
def test_bad_tensor_spec(spec: Any, nbytes: int) -> None:
    raises_protocol_error([_header("segment", _SEG_FIELDS, [spec]), b"\0" * nbytes])


def test_unsendable_dtype() -> None:
    seg = Segment("r", 0, 0, 0, "tree", 0, (1,), (-1,), (0,), hidden=torch.zeros(1, 2, dtype=torch.float64))
    with pytest.raises(ProtocolError):
        encode(seg)


@pytest.mark.parametrize("fields", [[1, 2], "ab", 5, [[1, 2, 3]]], ids=["list", "str", "int", "nested"])
def test_fields_not_a_map(fields: Any) -> None:
    raises_protocol_error([_header("shutdown", fields)])


@pytest.mark.parametrize("kind", [["shutdown"], {"a": 1}], ids=["list", "map"])
def test_unhashable_kind(kind: Any) -> None:
    raises_protocol_error([_header(kind, {"cmd_seq": 0})])


@pytest.mark.parametrize("specs", [5, 1.5, True])
def test_specs_not_a_list(specs: Any) -> None:
    raises_protocol_error([msgpack.packb({"v": PROTOCOL_VERSION, "kind": "shutdown", "f": {"cmd_seq": 0}, "t": specs})])


@pytest.mark.parametrize("hidden", [[[1.0]], "x", 0.0, False, {"a": 1}, b"\0"])
def test_hidden_as_plain_field(hidden: Any) -> None:
    raises_protocol_error([_header("segment", _SEG_FIELDS | {"hidden": hidden})])
