"""The projection of a bench run onto N boards: the fits, the flow shop, and what each knob changes."""

from __future__ import annotations

import math

import pytest

from common.link import LinkSettings
from common.observability.trace import SPAN_KINDS
from common.projection import (
    Boards,
    ProjectionError,
    draft_ms_per_step,
    fit_linear,
    fit_run,
    flow_shop_ms,
    project,
    relative_error,
    with_acceptance,
)
from tests.support.bench_runs import HEAD, LAYER, make_run


@pytest.mark.parametrize(("a", "b"), [(2.0, 0.1), (0.0, 0.3), (4.0, 0.0)])
def test_fit_linear_recovers_exact_costs(a: float, b: float) -> None:
    samples = [(f, r, a * f + b * r) for f, r in ((1, 1), (3, 40), (10, 90), (5, 5))]
    fitted = fit_linear(samples)
    assert fitted.per_forward_ms == pytest.approx(a, abs=1e-9)
    assert fitted.per_row_ms == pytest.approx(b, abs=1e-9)


def test_fit_linear_never_returns_a_negative_cost() -> None:
    fitted = fit_linear([(1, 10, 1.0), (1, 100, 20.0), (2, 10, 0.5)])
    assert fitted.per_forward_ms >= 0 and fitted.per_row_ms >= 0


@pytest.mark.parametrize(("times", "makespan"), [
    ([[1, 2, 3]], 6),  # one station: the jobs one after the other
    ([[1], [2], [3]], 6),  # one job: the stations one after the other
    ([[1, 1, 1], [1, 1, 1]], 4),  # a pipeline: fill, then one job a unit
    ([[1, 1], [5, 5]], 11),  # the slow second station sets the pace
])
def test_flow_shop_makespan(times, makespan) -> None:
    assert flow_shop_ms(times) == makespan


def test_fit_recovers_the_run_costs_and_a_hop() -> None:
    fit = fit_run(make_run())
    assert fit.stage_layer.per_forward_ms == pytest.approx(LAYER.per_forward_ms)
    assert fit.head.per_row_ms == pytest.approx(HEAD.per_row_ms)
    compute = 8 * LAYER.ms(1, 1) + HEAD.ms(1, 1)
    assert fit.hop_ms == pytest.approx((100.0 - compute) / 5)  # 2 stages: 5 hops round the ring


def test_projection_at_the_run_own_n_gives_back_ar_and_flowspec() -> None:
    fit = fit_run(make_run())
    rates = project(fit, Boards(2))
    assert rates["ar"] == pytest.approx(20 / 2.0)  # 20 decode tokens in 2000 ms
    assert rates["flowspec"] == pytest.approx(16 / 1.5)  # the gap is fitted at the run's N


def test_faster_boards_double_every_rate() -> None:
    fit = fit_run(make_run())
    slow, fast = project(fit, Boards(4)), project(fit, Boards(4, speed=2.0))
    for mode, rate in slow.items():
        assert fast[mode] == pytest.approx(2 * rate)


def test_link_latency_adds_one_latency_per_hop_to_an_ar_step() -> None:
    fit = fit_run(make_run())
    plain = project(fit, Boards(4))["ar"]
    slow = project(fit, Boards(4, link=LinkSettings(0.0, 3.0)))["ar"]
    step_ms = 1e3 / plain
    assert 1e3 / slow == pytest.approx(step_ms + (4 + 3) * 3.0)


def test_bandwidth_charges_hidden_state_bytes_on_the_stage_hops() -> None:
    fit = fit_run(make_run())
    plain = project(fit, Boards(2))["ar"]
    narrow = project(fit, Boards(2, link=LinkSettings(8.0, 0.0), hidden_size=1000))["ar"]
    # 2 hidden-state hops of 1 row x 1000 x 2 bytes at 8 Mbps: 2 ms each
    assert 1e3 / narrow == pytest.approx(1e3 / plain + 2 * 2.0)


def test_deeper_pipelines_keep_ar_compute_and_add_hops() -> None:
    fit = fit_run(make_run())
    two, eight = project(fit, Boards(2))["ar"], project(fit, Boards(8))["ar"]
    assert 1e3 / eight == pytest.approx(1e3 / two + 6 * fit.hop_ms)  # the same layers, 6 more hops
    assert eight < two


def test_a_drafter_bound_flowspec_run_keeps_its_rate_at_any_depth_but_for_the_refills() -> None:
    run = make_run()
    flowspec = next(r for r in run["records"] if r["mode"] == "flowspec")["stats"]
    flowspec.update(drafter_ms_per_step=1000.0, decode_ms=8 * 1100.0)  # the drafter dwarfs every stage
    fit = fit_run(run)
    rates = [project(fit, Boards(n))["flowspec"] for n in (1, 2, 4)]
    assert rates[1] == pytest.approx(16 / 8.8)
    assert rates == pytest.approx([16 / 8.8] * 3, rel=0.01)  # 2 rounds' refills differ, in 8.8 s


@pytest.mark.parametrize("boards", [
    lambda: Boards(0), lambda: Boards(2, speed=0.0), lambda: Boards(2, link=LinkSettings(10.0, 0.0)),
])
def test_boards_that_cannot_be_projected_onto(boards) -> None:
    with pytest.raises(ProjectionError):
        boards()


def test_more_stages_than_layers_is_an_error() -> None:
    with pytest.raises(ProjectionError, match="cannot split 8 layers"):
        project(fit_run(make_run()), Boards(9))


def test_a_run_without_ar_cannot_be_fitted() -> None:
    run = make_run()
    run["records"] = [r for r in run["records"] if r["mode"] != "ar"]
    with pytest.raises(ProjectionError, match="no ar"):
        fit_run(run)


def test_draft_time_counts_the_draft_spans_after_the_prefill() -> None:
    draft, forward = SPAN_KINDS.index("draft"), SPAN_KINDS.index("forward")
    stats = {"steps": 2, "prefill_ms": 10.0, "drafter_ms_per_step": 1.0, "trace": {
        "drafter": [draft, 0, 5_000, draft, 20_000, 30_000, draft, 60_000, 10_000],
        "stage-1": [forward, 1_000, 1_000],
    }}
    assert draft_ms_per_step(stats) == pytest.approx((30 + 10) / 2)  # the first span is the prefill's
    assert draft_ms_per_step({**stats, "trace": {}}) == 1.0


def test_relative_error() -> None:
    assert relative_error(11.5, 10.0) == pytest.approx(0.15)
    assert math.isnan(relative_error(1.0, 0.0))


def test_with_acceptance_keeps_the_costs_and_takes_the_requests() -> None:
    costs, behaviour = fit_run(make_run()), fit_run(make_run(ar_step_ms=300.0))
    mixed = with_acceptance(costs, behaviour)
    assert (mixed.hop_ms, mixed.stage_layer) == (costs.hop_ms, costs.stage_layer)
    assert mixed.requests == behaviour.requests
    assert project(mixed, Boards(2))["ar"] == pytest.approx(project(costs, Boards(2))["ar"])  # same ar steps


def test_with_acceptance_needs_the_same_model() -> None:
    other = make_run()
    other["cluster"]["stages"][1]["layers"] = [4, 10]
    with pytest.raises(ProjectionError, match="models differ"):
        with_acceptance(fit_run(make_run()), fit_run(other))
