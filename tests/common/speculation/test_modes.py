"""Modes, segment phases and verdict kinds: typed in the code, their plain strings on the wire."""

from __future__ import annotations

import msgpack
import pytest

from common.speculation.modes import MODES, DraftSettings, Mode
from common.wire.codec import decode, encode
from common.wire.commands import StartRequest
from common.wire.errors import ProtocolError
from common.wire.reports import Verdict, VerdictKind
from common.wire.ring import Phase, Segment

# mode: drafts, continues_round, verifies_whole_tree, grows_by_level, drafts ahead with "grow" / "redraft"
TRAITS = [
    (Mode.AR, False, False, False, False, False, False),
    (Mode.CHUNK, True, False, True, False, False, False),
    (Mode.PIPEDEC, True, True, False, True, False, False),
    (Mode.FLOWSPEC, True, True, False, False, True, False),
]


@pytest.mark.parametrize(("mode", "drafts", "continues", "whole", "by_level", "ahead_grow", "ahead_redraft"), TRAITS)
def test_each_mode_has_its_traits(mode, drafts, continues, whole, by_level, ahead_grow, ahead_redraft):
    assert (mode.drafts, mode.continues_round, mode.verifies_whole_tree, mode.grows_by_level) == (
        drafts, continues, whole, by_level)
    assert mode.drafts_ahead(DraftSettings(expansion="grow")) is ahead_grow
    assert mode.drafts_ahead(DraftSettings(expansion="redraft")) is ahead_redraft


def test_the_mode_names_are_the_wire_strings():
    assert MODES == ("ar", "chunk", "pipedec", "flowspec")
    assert [Mode(name) for name in MODES] == list(Mode)


def _header(frames) -> dict:
    return msgpack.unpackb(frames[0])


def test_typed_fields_travel_as_plain_strings_and_come_back_typed():
    start = StartRequest(request_id="r", cmd_seq=1, prompt=(1,), max_new_tokens=2, mode="pipedec")
    assert start.mode is Mode.PIPEDEC
    assert _header(encode(start))["f"]["mode"] == "pipedec"
    assert decode(encode(start)).mode is Mode.PIPEDEC
    seg = Segment(request_id="r", round=0, epoch=0, seq=0, phase="tree", first=0, tokens=(5,), parents=(-1,),
                  positions=(3,))
    assert _header(encode(seg))["f"]["phase"] == "tree" and decode(encode(seg)).phase is Phase.TREE
    verdict = Verdict(request_id="r", seq=0, epoch=0, round=0, kind="noop")
    assert _header(encode(verdict))["f"]["kind"] == "noop" and decode(encode(verdict)).kind is VerdictKind.NOOP


@pytest.mark.parametrize(("message", "field", "value"), [
    (StartRequest(request_id="r", cmd_seq=1, prompt=(1,), max_new_tokens=2), "mode", "beam"),
    (Verdict(request_id="r", seq=0, epoch=0, round=0, kind="tree"), "kind", "maybe"),
    (Segment(request_id="r", round=0, epoch=0, seq=0, phase="prefill", first=0, tokens=(), parents=(),
             positions=()), "phase", "decode"),
])
def test_an_unknown_name_on_the_wire_is_a_protocol_error(message, field, value):
    frames = encode(message)
    header = _header(frames)
    header["f"][field] = value
    with pytest.raises(ProtocolError, match=value):
        decode([msgpack.packb(header), *frames[1:]])
