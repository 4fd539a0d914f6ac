"""logview's pure parts: merging streams by time, and putting live lines back in time order."""

from __future__ import annotations

import pytest

from common.observability.logview import LogLine, Reorder, merge, parse


def _at(second: int, service: str = "s") -> LogLine:
    return LogLine(f"2026-12-01T00:00:{second:02d}Z", service, "info", f"{service}@{second}")


def test_merge_interleaves_streams_by_time() -> None:
    merged = merge([[_at(1, "a"), _at(4, "a")], [_at(2, "b"), _at(3, "b")], []])
    assert [line.raw for line in merged] == ["a@1", "b@2", "b@3", "a@4"]


def test_parse_gives_an_untimed_line_the_time_before_it() -> None:
    lines = list(parse(["Traceback", '{"ts": "2026-12-01T00:00:05Z", "event": "x"}', "  more"], "stage-1",
                       last_ts="2026-12-01T00:00:01Z"))
    assert [line.ts[-3:] for line in lines] == ["01Z", "05Z", "05Z"]
    assert [line.service for line in lines] == ["stage-1"] * 3


# (arrivals as (time, seconds of the lines), release times) -> lines released at each
@pytest.mark.parametrize(("arrivals", "release_at", "released"), [
    ([(0.0, [5]), (0.5, [3])], [0.9, 1.0, 1.6], [[], [3, 5], []]),  # the slower line still comes first
    ([(0.0, [5]), (0.5, [7])], [1.0, 1.5], [[5], [7]]),  # a later line waits its own hold
    ([(0.0, [2, 9]), (0.2, [4])], [1.0], [[2, 4, 9]]),  # everything not later than the due line goes with it
    ([(0.0, [6]), (2.0, [3])], [1.0, 3.0], [[6], [3]]),  # later than the hold: printed as it comes, late
])
def test_reorder_holds_lines_for_slower_streams(arrivals, release_at, released) -> None:
    reorder = Reorder(hold_s=1.0)
    got = []
    pending = sorted(arrivals)
    for now in release_at:
        while pending and pending[0][0] <= now:
            when, seconds = pending.pop(0)
            reorder.add([_at(s) for s in seconds], when)
        got.append([int(line.ts[17:19]) for line in reorder.release(now)])
    assert got == released


def test_reorder_flush_gives_every_held_line_in_order() -> None:
    reorder = Reorder(hold_s=1.0)
    reorder.add([_at(8), _at(1)], 0.0)
    assert reorder.release(0.5) == []
    assert [line.raw for line in reorder.flush()] == ["s@1", "s@8"] and reorder.flush() == []
