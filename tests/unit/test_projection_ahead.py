"""The ring model with a drafter that drafts ahead of the verdicts, and its measurement, on hand-made inputs."""

from __future__ import annotations

import pytest

from common.projection import Ahead, Job, Messages, ProjectionError, Round, ring_ms
from common.projection_ahead import draft_ahead

QUIET = Messages(verdict_ms=0.0, expand_ms=0.0)


def job(*holds: float) -> Job:
    return Job(tuple(0.0 for _ in holds), holds)


def ahead_round(verdicts: int, level_ms: float, levels: int, segment: Job, fill: tuple[Job, ...]) -> Round:
    return Round(fill_ms=0.0, fill=fill, gather=False, ahead=Ahead(verdicts, level_ms, levels, (segment,) * levels))


def test_a_slow_drafter_bounds_the_verified_steps_at_one_level_each() -> None:
    quick = job(1.0, 1.0, 1.0)
    # the fill's 3 verdicts at 3, 4, 5; then one level per 50 ms, each sent at once and verified 3 ms later
    assert ring_ms([ahead_round(6, 50.0, 1, quick, (quick,) * 3)], QUIET) == pytest.approx(3 * 50 + 3)


def test_a_slow_stage_bounds_the_steps_and_the_drafter_waits_at_its_level_cap() -> None:
    slow = job(1.0, 100.0, 1.0)
    # the 100 ms stage releases a verdict per 100 ms from 102; the drafter is never waited for
    assert ring_ms([ahead_round(5, 1.0, 3, slow, (slow,) * 3)], QUIET) == pytest.approx(102 + 4 * 100)


def test_the_next_fill_waits_for_the_level_under_way() -> None:
    ends_early = ahead_round(1, 50.0, 1, job(1.0), (job(1.0),))
    # round 1 ends at 1; the drafter's level started at 0 ends at 50, then the next fill's segment takes 1
    assert ring_ms([ends_early, Round(fill_ms=0.0, fill=(job(1.0),))], QUIET) == pytest.approx(51.0)


def test_drafting_ahead_needs_a_verdict_and_a_segment_per_level() -> None:
    with pytest.raises(ProjectionError):
        Ahead(verdicts=0, level_ms=1.0, levels=1, segments=(job(1.0),))
    with pytest.raises(ProjectionError):
        Ahead(verdicts=1, level_ms=1.0, levels=2, segments=(job(1.0),))


def test_the_drafting_ahead_is_read_from_the_trace() -> None:
    draft, send, schedule, levels, width = 4, 3, 6, 7, 8
    drafter = [draft, 0, 100_000, send, 100_000, 10, send, 100_010, 10, send, 100_020, 10,  # a fill: 2 segments
               draft, 100_100, 50_000, width, 150_100, 4, levels, 150_100, 2,  # a level of 4 nodes
               send, 150_200, 10, send, 150_210, 10,  # a growth: 1 segment
               draft, 150_300, 50_000, width, 200_300, 4]  # a level pruned before it was sent
    trace = {"drafter": drafter, "scheduler": [schedule, 0, 100, schedule, 120_000, 100, schedule, 170_000, 100]}
    measured = draft_ahead({"trace": trace}, begin=0.0, verdicts=2, growth_rows=4, grow_levels=3)
    assert measured.fill_ms == (100.0,)
    assert measured.verdicts == (2,)
    # 4 of the 8 nodes drafted were sent: a kept level costs two levels' ms and sends 4 rows
    assert measured.level_ms == pytest.approx(100.0)
    assert measured.level_rows == pytest.approx(4.0)
    assert measured.levels == 2
