"""Sequence checks and the epoch-ordered prune log."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.speculation.tree import remap_rows
from common.wire.commands import Expand, Prune
from common.wire.errors import ProtocolError
from common.wire.ordering import EarlyMessages, OrderError, PruneLog, SequenceCheck


def event(epoch: int, keep: tuple[int, ...] = (1, 2), round_: int = 0) -> Prune:
    return Prune("r", epoch, epoch, round_, (0,), keep, (), -1)


def test_order_error_is_a_protocol_error() -> None:
    assert issubclass(OrderError, ProtocolError)


# --------------------------------------------------------------------------------------- SequenceCheck
def test_sequence_in_order() -> None:
    check = SequenceCheck("stream")
    for seq in range(10):
        check.check(seq)
    assert check.expected == 10


def test_sequence_gap_is_lost() -> None:
    check = SequenceCheck("stream")
    check.check(0)
    with pytest.raises(OrderError, match="lost"):
        check.check(2)
    assert check.expected == 1, "a rejected message changes nothing"
    check.check(1)


def test_sequence_first_message_missing_is_lost() -> None:
    with pytest.raises(OrderError, match="lost"):
        SequenceCheck("stream").check(1)


@pytest.mark.parametrize("seq", [0, 1, 2])
def test_sequence_repeat_is_duplicated_or_reordered(seq: int) -> None:
    check = SequenceCheck("stream")
    for s in range(3):
        check.check(s)
    with pytest.raises(OrderError, match="duplicated or reordered"):
        check.check(seq)
    assert check.expected == 3
    check.check(3)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-2, 12), max_size=30))
def test_sequence_accepts_exactly_the_next_number(seqs: list[int]) -> None:
    check = SequenceCheck("stream")
    for seq in seqs:
        expected = check.expected
        if seq == expected:
            check.check(seq)
            assert check.expected == expected + 1
        else:
            with pytest.raises(OrderError, match="lost" if seq > expected else "duplicated or reordered"):
                check.check(seq)
            assert check.expected == expected


# ------------------------------------------------------------------------------------------- PruneLog
def test_prune_log_records_in_epoch_order() -> None:
    log = PruneLog()
    log.record(event(1))
    log.record(event(2, round_=1))
    assert (log.epoch, log.round) == (2, 1)


@pytest.mark.parametrize("epoch", [0, 2, 3, -1])
def test_prune_log_rejects_skip_or_repeat_from_start(epoch: int) -> None:
    log = PruneLog()
    with pytest.raises(OrderError):
        log.record(event(epoch))
    assert log.epoch == 0


@pytest.mark.parametrize("epoch", [1, 2, 3, 5])
def test_prune_log_rejects_skip_or_repeat(epoch: int) -> None:
    log = PruneLog()
    log.record(event(1))
    log.record(event(2))
    log.record(event(3, round_=4))
    with pytest.raises(OrderError):
        log.record(event(epoch, keep=(9,), round_=9))
    assert (log.epoch, log.round) == (3, 4), "a rejected event changes nothing"
    # the rejected event did not replace the recorded one
    assert log.bring_forward(2, 0, (-1, 0, 1, 0)) == remap_rows(0, (-1, 0, 1, 0), (1, 2))


def test_bring_forward_same_epoch_is_identity() -> None:
    log = PruneLog()
    log.record(event(1))
    now = log.bring_forward(1, 4, (1, 2, 4))
    assert (now.rows, now.first, now.parents) == ((0, 1, 2), 4, (1, 2, 4))


def test_bring_forward_chains_events() -> None:
    # tree 0 -> 1, 2; 1 -> 3; 2 -> 4, 5; 4 -> 6; segment holds nodes 3..6
    parents = (-1, 0, 0, 1, 2, 2, 4)
    log = PruneLog()
    log.record(event(1, keep=(2, 4, 5, 6)))  # -> 0:(2) 1:(4) 2:(5) 3:(6)
    log.record(event(2, keep=(1, 3)))  # -> 0:(4) 1:(6)
    now = log.bring_forward(0, 3, parents[3:])
    assert (now.rows, now.first, now.parents) == ((1, 3), 0, (-1, 0))
    now = log.bring_forward(1, 2, (0, 1))  # nodes 5, 6 in epoch-1 numbering
    assert (now.rows, now.first, now.parents) == ((1,), 1, (0,))


def test_bring_forward_through_round_end_drops_everything() -> None:
    log = PruneLog()
    log.record(event(1, keep=()))
    log.record(event(2, keep=(1,)))
    now = log.bring_forward(0, 0, (-1, 0, 0))
    assert now.rows == () and now.parents == ()


def test_bring_forward_window() -> None:
    log = PruneLog()
    total = PruneLog.KEEP_EVENTS + 10
    for e in range(1, total + 1):
        log.record(event(e, keep=(0, 1, 2, 3)))  # identity on a 4-node tree
    oldest = total - PruneLog.KEEP_EVENTS  # events oldest+1 .. total are all still kept
    now = log.bring_forward(oldest, 0, (-1, 0, 1, 2))
    assert (now.rows, now.first, now.parents) == ((0, 1, 2, 3), 0, (-1, 0, 1, 2))
    for too_old in (oldest - 1, 0):
        with pytest.raises(OrderError, match="older than the prune log"):
            log.bring_forward(too_old, 0, (-1, 0, 1, 2))


def test_bring_forward_too_old_even_for_an_empty_bubble() -> None:
    log = PruneLog()
    for e in range(1, PruneLog.KEEP_EVENTS + 3):
        log.record(event(e))
    with pytest.raises(OrderError):
        log.bring_forward(0, 0, ())


# -------------------------------------------------------------------------------------- EarlyMessages
def test_early_messages_release_per_request_in_arrival_order() -> None:
    early = EarlyMessages()
    msgs = [Expand("a", 0, 0), Expand("b", 0, 0), event(1), Expand("a", 1, 1)]
    for m in msgs:
        early.hold(m)
    assert early.release("r") == [msgs[2]]
    assert early.release("a") == [msgs[0], msgs[3]]
    assert early.release("a") == [], "released messages are held no longer"
    assert early.release("b") == [msgs[1]], "another request's messages stay held"


def test_early_messages_discard_forgets_one_request() -> None:
    early = EarlyMessages()
    early.hold(Expand("a", 0, 0))
    early.hold(Expand("b", 0, 0))
    early.discard("a")
    assert early.release("a") == []
    assert len(early.release("b")) == 1


def test_early_messages_are_bounded() -> None:
    early = EarlyMessages()
    for i in range(EarlyMessages.LIMIT + 5):
        early.hold(Expand("a", i, 0))
    released = early.release("a")
    assert len(released) == EarlyMessages.LIMIT
    assert released[0].cmd_seq == 5, "the oldest are dropped (silently)"


def test_early_messages_bound_is_shared_by_all_requests() -> None:
    early = EarlyMessages()
    early.hold(Expand("old", 0, 0))
    for i in range(EarlyMessages.LIMIT):
        early.hold(Expand(f"r{i}", 0, 0))
    assert early.release("old") == [], "the oldest message overall is dropped"
    assert len(early.release("r0")) == 1


def test_bring_forward_keeps_late_nodes_under_a_kept_parent() -> None:
    log = PruneLog()
    # Decided over nodes 0..3 (0 -> 1 -> 2, 0 -> 3); nodes 4 (under 2) and 5 (under 3) were still being reported.
    log.record(Prune("r", 0, 1, 0, (0,), (1, 2), (7,), 7, known=4))
    now = log.bring_forward(0, 4, (2, 3))
    assert (now.rows, now.first, now.parents) == ((0,), 2, (1,))


def test_bring_forward_of_late_nodes_out_of_order_is_an_order_error() -> None:
    log = PruneLog()
    log.record(Prune("r", 0, 1, 0, (0,), (1,), (7,), 7, known=2))
    with pytest.raises(OrderError, match="brought before"):
        log.bring_forward(0, 3, (1,))
