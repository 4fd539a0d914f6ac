"""Reading a bench run into the ring model's inputs: forward costs, hops, the drafter's answers."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from common.observability.trace import SPAN_KINDS
from common.projection.fit import Expansion, expansions, fit_linear, fit_per_group, fit_run
from common.projection.ring import ProjectionError
from tests.support.bench_runs import DRAFT_MS, HEAD, HOPS, LAYER, make_run


@pytest.mark.parametrize(("a", "b"), [(2.0, 0.1), (0.0, 0.3), (4.0, 0.0)])
def test_fit_linear_recovers_exact_costs(a: float, b: float) -> None:
    fitted = fit_linear([(f, r, a * f + b * r) for f, r in ((1, 1), (3, 40), (10, 90), (5, 5))])
    assert fitted.per_forward_ms == pytest.approx(a, abs=1e-9)
    assert fitted.per_row_ms == pytest.approx(b, abs=1e-9)


def test_fit_linear_never_returns_a_negative_cost() -> None:
    fitted = fit_linear([(1, 10, 1.0), (1, 100, 20.0), (2, 10, 0.5)])
    assert fitted.per_forward_ms >= 0 and fitted.per_row_ms >= 0


def test_each_group_gets_its_own_cost_per_forward_and_all_share_the_cost_per_row() -> None:
    samples = {"calm": [(f, r, 2.0 * f + 0.1 * r) for f, r in ((10, 10), (10, 80))],
               "busy": [(f, r, 3.0 * f + 0.1 * r) for f, r in ((10, 10), (10, 80))]}
    fitted = fit_per_group(samples)
    assert fitted["calm"].per_forward_ms == pytest.approx(2.0)
    assert fitted["busy"].per_forward_ms == pytest.approx(3.0)
    assert fitted["calm"].per_row_ms == fitted["busy"].per_row_ms == pytest.approx(0.1)


def test_fit_reads_the_fixture_costs_and_hops() -> None:
    fit = fit_run(make_run())
    assert fit.stages == 2
    assert dataclasses.astuple(fit.costs.hops) == pytest.approx(dataclasses.astuple(HOPS))
    ar = fit.costs.forwards["ar"]
    assert ar.layer.per_row_ms == pytest.approx(LAYER.per_row_ms, abs=1e-6)
    assert ar.head.per_forward_ms == pytest.approx(HEAD.per_forward_ms, abs=1e-6)


def test_requests_keep_their_acceptance_and_decode_work() -> None:
    flowspec = next(r for r in fit_run(make_run()).requests if r.mode == "flowspec")
    assert (flowspec.steps, flowspec.rounds, flowspec.verdicts) == (6, 2, 6)
    assert flowspec.stage_rows == (54, 54)  # two fills of 11 nodes and four growths of 8, the prompt taken out
    assert flowspec.draft_ms == pytest.approx(6 * DRAFT_MS)


def _drafter_trace(spans: list[tuple[str, float, float]]) -> dict:
    flat = [x for kind, start, dur in spans for x in (SPAN_KINDS.index(kind), round(start * 1e3), round(dur * 1e3))]
    return {"trace": {"drafter": flat}}


def test_each_run_of_sends_closes_one_answer_with_the_drafts_since_the_last() -> None:
    stats = _drafter_trace([
        ("draft", 0.0, 5.0),  # before decode: not counted
        ("draft", 10.0, 20.0), ("send", 30.0, 0.1), ("send", 30.1, 0.1), ("send", 30.2, 0.1),  # a fill of 2
        ("draft", 40.0, 3.0),  # a context extension after a Prune ...
        ("draft", 45.0, 7.0), ("send", 52.0, 0.1), ("send", 52.1, 0.1),  # ... and the growth: one answer
        ("draft", 60.0, 4.0),  # after the last decision: no answer
    ])
    assert expansions(stats, begin=10.0) == (Expansion(2, 20.0), Expansion(1, 10.0))


def test_a_run_without_its_trace_cannot_be_projected() -> None:
    run = make_run()
    for record in run["records"]:
        record["stats"].pop("trace", None)
    with pytest.raises(ProjectionError, match="--trace"):
        fit_run(run)


def test_a_run_without_ar_has_no_hops_to_measure() -> None:
    run = copy.deepcopy(make_run())
    run["records"] = [r for r in run["records"] if r["mode"] != "ar"]
    with pytest.raises(ProjectionError, match="ar steps"):
        fit_run(run)


def test_flowspec_whose_scheduler_decided_while_the_drafter_drafted_is_measured_as_drafting_ahead() -> None:
    run = make_run()
    flowspec = next(r for r in run["records"] if r["mode"] == "flowspec")["stats"]["trace"]
    draft = SPAN_KINDS.index("draft")
    start, dur = next((a, d) for c, a, d in zip(flowspec["drafter"][0::3], flowspec["drafter"][1::3],
                                                 flowspec["drafter"][2::3], strict=True) if c == draft)
    flowspec["scheduler"] += [SPAN_KINDS.index("schedule"), start + dur // 2, 0]  # a decision mid-draft
    ahead = next(r for r in fit_run(run).requests if r.mode == "flowspec").ahead
    assert ahead is not None and ahead.levels == 3  # no tree_levels counter: the settings' grow_levels
    assert sum(len(s) for s in ahead.steps) == next(r for r in fit_run(run).requests if r.mode == "flowspec").verdicts
    assert next(r for r in fit_run(make_run()).requests if r.mode == "flowspec").ahead is None
