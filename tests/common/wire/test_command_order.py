"""cmd_seq checking: the next command passes; a gap is reported once and skipped; a repeat changes nothing."""

from __future__ import annotations

import pytest

from common.wire.ordering import CommandOrder


@pytest.mark.parametrize(
    ("seqs", "problems"),
    [
        ([0, 1, 2], ["", "", ""]),
        ([7, 8], ["", ""]),  # a service restarted mid-run joins the stream where it is
        ([0, 1, 1, 2], ["", "", "repeated", ""]),
        ([0, 1, 0, 2], ["", "", "repeated", ""]),
        ([0, 3, 4], ["", "lost", ""]),  # after a gap the stream goes on from the new number
        ([0, 2, 1, 3], ["", "lost", "repeated", ""]),
    ],
)
def test_command_order(seqs: list[int], problems: list[str]) -> None:
    order = CommandOrder()
    assert [order.check(s) for s in seqs] == problems


def test_a_gap_names_the_missing_numbers() -> None:
    order = CommandOrder()
    order.check(4)
    assert order.check(9) == "lost" and order.gap == (5, 8)
