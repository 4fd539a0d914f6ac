"""The ring model on inputs whose answer is known by hand, and what each knob of the boards changes."""

from __future__ import annotations

import dataclasses

import pytest

from common.projection.fit import fit_run
from common.projection.modes import project, request_ms, request_rounds
from common.projection.ring import Boards, Job, Messages, ProjectionError, Round, relative_error, ring_ms
from common.wire.link import LinkSettings
from tests.support.bench_runs import HEAD, HOPS, LAYER, LAYERS, ar_step_ms, make_run

QUIET = Messages(verdict_ms=0.0, expand_ms=0.0)


def job(*holds: float, hop: float = 0.0) -> Job:
    return Job(tuple(hop for _ in holds), holds)


def test_one_segment_round_the_ring_pays_every_hop_and_hold() -> None:
    one = Round(fill_ms=3.0, fill=(job(10.0, 10.0, 5.0, hop=1.0),))
    # expand 0.5, draft 3, three hops of 1 with 25 of holds, verdict 2: 33.5 a round, one after another
    assert ring_ms([one] * 3, Messages(verdict_ms=2.0, expand_ms=0.5)) == pytest.approx(3 * 33.5)


def test_chunk_segments_flow_through_the_stations_as_a_pipeline() -> None:
    gathered = Round(fill_ms=0.0, fill=(job(10.0, 10.0, 1.0),) * 3)
    assert ring_ms([gathered], QUIET) == pytest.approx(3 * 10 + 10 + 1)  # fill the pipeline, then a job per 10


def test_a_bottleneck_stage_sets_flowspec_pace() -> None:
    grows = 30
    slow = Round(fill_ms=0.0, fill=(job(1.0, 100.0, 1.0),) * 3, gather=False, grow_ms=(0.0,) * grows,
                 grow=job(1.0, 100.0, 1.0))
    # 31 verdicts; once the pipeline is full, the 100 ms stage releases one segment per 100 ms
    assert ring_ms([slow], QUIET) == pytest.approx(1 + 100 * (grows + 1) + 1)


def test_a_slow_drafter_sets_flowspec_pace_and_the_scheduler_waits_for_its_report() -> None:
    grows = 20
    drafter_bound = Round(fill_ms=0.0, fill=(job(1.0, 1.0, 1.0),) * 3, gather=False, grow_ms=(50.0,) * grows,
                          grow=job(1.0, 1.0, 1.0))
    msg = Messages(verdict_ms=0.0, expand_ms=2.0)
    # each decision waits for the last report: expand out (2), draft (50), report back (2)
    assert ring_ms([drafter_bound], msg) == pytest.approx(2 + 3 + grows * 54)


def test_a_round_end_drops_the_segments_still_queued() -> None:
    short = Round(fill_ms=0.0, fill=(job(10.0, 10.0),) * 3, gather=False)
    after = Round(fill_ms=0.0, fill=(job(10.0, 10.0),))
    # round 1 ends at 20 (its first verdict); stage 1 is busy with the second fill segment until 20 and
    # the third never starts, stage 2 drops the second: round 2's segment starts at 20 and ends at 40
    assert ring_ms([short, after], QUIET) == pytest.approx(40.0)


def test_rounds_need_fill_segments_and_a_grown_segment_to_grow() -> None:
    with pytest.raises(ProjectionError):
        Round(fill_ms=0.0, fill=())
    with pytest.raises(ProjectionError):
        Round(fill_ms=0.0, fill=(job(1.0),), gather=False, grow_ms=(1.0,))


# ------------------------------------------------------------------------------------ measured requests
def test_the_run_own_ar_is_given_back_exactly() -> None:
    fit = fit_run(make_run())
    assert project(fit, Boards(2))["ar"] == pytest.approx(1e3 / ar_step_ms(2))  # one token a step


def test_flowspec_rounds_follow_the_drafter_answers_and_keep_the_rows_sent() -> None:
    fit = fit_run(make_run())
    flowspec = next(r for r in fit.requests if r.mode == "flowspec")  # answers: fill, 3 growths, fill, 1 growth
    rounds, _ = request_rounds(fit.costs, flowspec, Boards(4))
    assert [len(r.fill) for r in rounds] == [5, 5]  # a fill is one segment per hop of the target ring
    assert [len(r.grow_ms) for r in rounds] == [3, 1]
    # every segment's rows at stage 1: two fills of 11 and four growths of 8, as measured
    stage1 = LAYERS // 4 * LAYER.per_row_ms
    rows = sum(j.hold_ms[0] - LAYERS // 4 * LAYER.per_forward_ms for r in rounds for j in r.fill) / stage1
    assert rows + 4 * (rounds[0].grown.hold_ms[0] - LAYERS // 4 * LAYER.per_forward_ms) / stage1 == pytest.approx(54)


def test_a_fill_is_cut_into_one_segment_per_hop_unless_the_run_set_a_count() -> None:
    fit = fit_run(make_run())
    chunk = next(r for r in fit.requests if r.mode == "chunk")
    assert len(request_rounds(fit.costs, chunk, Boards(4))[0][0].fill) == 5
    two = dataclasses.replace(fit.costs, fill_segments=2)
    assert [len(j.hold_ms) for j in request_rounds(two, chunk, Boards(4))[0][0].fill] == [5, 5]  # 2 segments


def test_deeper_pipelines_keep_ar_compute_and_add_one_hop_a_stage() -> None:
    fit = fit_run(make_run())
    assert project(fit, Boards(4))["ar"] == pytest.approx(1e3 / ar_step_ms(4))
    assert ar_step_ms(4) - ar_step_ms(2) == pytest.approx(2 * HOPS.forward_ms)


def test_faster_boards_double_every_rate() -> None:
    fit = fit_run(make_run())
    base, fast = project(fit, Boards(4)), project(fit, Boards(4, speed=2.0))
    for mode, rate in base.items():
        assert fast[mode] == pytest.approx(2 * rate)


def test_link_latency_adds_one_latency_per_hop_to_an_ar_step() -> None:
    fit = fit_run(make_run())
    ar = next(r for r in fit.requests if r.mode == "ar")
    plain = request_ms(fit.costs, ar, Boards(2))
    slow = request_ms(fit.costs, ar, Boards(2, link=LinkSettings(0.0, 3.0)))
    assert slow - plain == pytest.approx(ar.steps * 5 * 3.0)  # drafter, 2 stages, verifier, scheduler: 5 hops


def test_bandwidth_charges_hidden_states_on_the_stage_hops_only() -> None:
    fit = fit_run(make_run())
    ar = next(r for r in fit.requests if r.mode == "ar")
    plain = request_ms(fit.costs, ar, Boards(2))
    link = LinkSettings(8.0, 0.0)  # 1 byte a microsecond
    narrow = request_ms(fit.costs, ar, Boards(2, link=link, hidden_size=500))
    assert narrow - plain == pytest.approx(ar.steps * 2 * 1.0)  # two hops of 1000 bytes (one row, bf16)


def test_a_link_bound_chunk_round_pays_the_bytes_of_its_segments() -> None:
    fit = fit_run(make_run())
    chunk = next(r for r in fit.requests if r.mode == "chunk")
    plain = request_ms(fit.costs, chunk, Boards(1))
    # one stage: one hidden-state hop (stage -> verifier) per segment; 11 nodes in 2 segments of 5 and 6
    # rows, 1000 bytes a row at 8 Mbps (1 ms a row), the link idle between: 11 ms more a round at most,
    # at least the last segment's 6 ms
    slow = request_ms(fit.costs, chunk, Boards(1, link=LinkSettings(8.0, 0.0), hidden_size=500))
    assert 6 * chunk.rounds <= slow - plain <= 11 * chunk.rounds + 1e-9


def test_behaviour_from_another_run_replays_its_requests_with_these_costs() -> None:
    fit, other = fit_run(make_run()), fit_run(make_run(stages=4))
    slower = dataclasses.replace(other, costs=dataclasses.replace(
        other.costs, forwards={m: dataclasses.replace(c, layer=dataclasses.replace(c.layer, per_forward_ms=20.0))
                               for m, c in other.costs.forwards.items()}))
    assert project(fit, Boards(4), slower) == pytest.approx(project(fit, Boards(4)))  # costs are fit's


@pytest.mark.parametrize("boards", [{"stages": 0}, {"stages": 2, "speed": 0.0},
                                    {"stages": 2, "link": LinkSettings(100.0, 0.0)}])
def test_boards_that_cannot_be_projected_onto(boards) -> None:
    with pytest.raises(ProjectionError):
        Boards(**boards)


def test_more_stages_than_layers_is_an_error() -> None:
    with pytest.raises(ProjectionError, match=f"cannot split {LAYERS} layers"):
        project(fit_run(make_run()), Boards(LAYERS + 1))


def test_costs_of_the_fixture_are_what_the_fit_finds() -> None:
    costs = fit_run(make_run()).costs
    for mode in ("ar", "chunk", "flowspec"):
        assert costs.forwards[mode].layer.per_forward_ms == pytest.approx(LAYER.per_forward_ms, abs=1e-6)
        assert costs.forwards[mode].head.per_row_ms == pytest.approx(HEAD.per_row_ms, abs=1e-6)


def test_relative_error() -> None:
    assert relative_error(11.0, 10.0) == pytest.approx(0.1)
    assert relative_error(9.0, 10.0) == pytest.approx(-0.1)
