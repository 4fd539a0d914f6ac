"""The ring model with a drafter that drafts ahead of the verdicts, and its measurement, on hand-made inputs."""

from __future__ import annotations

import pytest

from common.projection.ahead import draft_ahead
from common.projection.ring import Ahead, Job, Messages, ProjectionError, Round, ring_ms

QUIET = Messages(verdict_ms=0.0, expand_ms=0.0)
STEP, NOOP = True, False


def job(*holds: float) -> Job:
    return Job(tuple(0.0 for _ in holds), holds)


def ahead_round(steps: tuple[bool, ...], level_ms: float, levels: int, segment: Job, fill: tuple[Job, ...],
                drains: bool = True) -> Round:
    return Round(fill_ms=0.0, fill=fill, gather=False,
                 ahead=Ahead(steps, level_ms, levels, (segment,) * levels, drains=drains))


def test_a_slow_drafter_bounds_the_verified_steps_at_one_level_each() -> None:
    quick = job(1.0, 1.0, 1.0)
    # the fill's 3 verdicts at 3, 4, 5; then one level per 50 ms, each sent as it is drafted, verified 3 ms later
    assert ring_ms([ahead_round((NOOP,) * 5 + (STEP,), 50.0, 1, quick, (quick,) * 3)], QUIET) == pytest.approx(153)


def test_a_slow_stage_bounds_the_steps_and_the_drafter_waits_at_its_level_cap() -> None:
    slow = job(1.0, 100.0, 1.0)
    # the 100 ms stage gives a verdict per 100 ms from 102; the drafter, 3 levels ahead, is never waited for
    assert ring_ms([ahead_round((STEP,) * 5, 1.0, 3, slow, (slow,) * 3)], QUIET) == pytest.approx(102 + 4 * 100)


def test_a_drafter_that_handled_one_message_per_level_let_a_prune_delay_the_credit_behind_it() -> None:
    ring = job(60.0)
    # the fill's verdict at 60; the segment of the extra credit (sent at 50) at 120. A noop's Expand is
    # handled after the level under way (at 100) and sends it: verdict at 180. A step's Prune takes that
    # turn, its Expand the next, after one more level (at 150): verdict at 210.
    assert ring_ms([ahead_round((NOOP, NOOP, STEP), 50.0, 2, ring, (ring,), drains=False)], QUIET) == pytest.approx(180)
    assert ring_ms([ahead_round((STEP, STEP, STEP), 50.0, 2, ring, (ring,), drains=False)], QUIET) == pytest.approx(210)


def test_a_draining_drafter_handles_a_steps_prune_and_expand_in_one_turn() -> None:
    ring = job(60.0)
    # as above, but at 100 the step's Prune and Expand are both handled: its segment leaves at 100, verdict 180
    assert ring_ms([ahead_round((STEP, STEP, STEP), 50.0, 2, ring, (ring,))], QUIET) == pytest.approx(180)
    assert ring_ms([ahead_round((NOOP, NOOP, STEP), 50.0, 2, ring, (ring,))], QUIET) == pytest.approx(180)


def test_the_next_fill_waits_for_the_drafter_to_reach_the_rounds_last_expand() -> None:
    ends_early = ahead_round((STEP,), 50.0, 1, job(1.0), (job(1.0),))
    # round 1 ends at 1; its Prune and Expand wait for the level under way (to 50), then the next fill's segment
    assert ring_ms([ends_early, Round(fill_ms=0.0, fill=(job(1.0),))], QUIET) == pytest.approx(51.0)


def test_drafting_ahead_needs_a_verdict_and_a_segment_per_level() -> None:
    with pytest.raises(ProjectionError):
        Ahead(steps=(), level_ms=1.0, levels=1, segments=(job(1.0),))
    with pytest.raises(ProjectionError):
        Ahead(steps=(STEP,), level_ms=1.0, levels=2, segments=(job(1.0),))


def test_the_drafting_ahead_is_read_from_the_trace() -> None:
    forward, draft, send, verify, schedule, levels = 1, 4, 3, 5, 6, 7
    drafter = [draft, 0, 100_000, send, 100_000, 10, send, 100_010, 10, send, 100_020, 10,  # a fill: 2 segments
               draft, 100_100, 50_000, levels, 150_100, 2,  # a level
               send, 150_200, 10, send, 150_210, 10,  # a growth: 1 segment
               draft, 150_300, 50_000]  # a level pruned before it was sent
    verifier = [forward, 110_000, 5_000, verify, 115_000, 100, verify, 116_000, 100,  # a step, a noop
                forward, 160_000, 5_000, verify, 165_000, 100]  # a step
    scheduler = [schedule, 0, 100, schedule, 120_000, 100, schedule, 121_000, 100, schedule, 170_000, 100]
    trace = {"drafter": drafter, "verifier": verifier, "scheduler": scheduler}
    measured = draft_ahead({"trace": trace}, begin=0.0, verdicts=3, growth_rows=4, grow_levels=3)
    assert measured.fill_ms == (100.0,)
    assert measured.steps == ((STEP, NOOP, STEP),)
    assert measured.level_ms == pytest.approx(50.0)
    assert measured.level_rows == pytest.approx(2.0)  # the growth's 4 rows over the 2 levels drafted
    assert measured.levels == 2
