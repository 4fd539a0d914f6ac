"""Benchmark summary maths on hand-made records: pooled rates, per-step figures, busy ratios, speedups."""

from __future__ import annotations

import pytest

from common.observability.bench_report import RunRecord, agreement, decode_rate, service_order, summarize


def _stats(new, decode_ms, wall_ms, steps, accepted, per_step, rounds, noops, drafter_ms, busy):
    return {
        "new_tokens": new, "decode_ms": decode_ms, "wall_ms": wall_ms, "steps": steps,
        "accepted_per_step": accepted, "tokens_per_step": per_step, "rounds": rounds, "noop_steps": noops,
        "drafter_busy_ms": drafter_ms,
        "services": {name: {"busy_ms": ms, "forwards": 1, "rows": 1} for name, ms in busy.items()},
    }


def _run(prompt, mode, **stats):
    return RunRecord(prompt, mode, True, _stats(**stats))


def _ar(prompt, new, decode_ms):
    return _run(prompt, "ar", new=new, decode_ms=decode_ms, wall_ms=decode_ms + 100, steps=new - 1, accepted=0.0,
                per_step=1.0, rounds=new - 1, noops=0, drafter_ms=0.0, busy={"stage-1": 10, "verifier": 5})


RECORDS = [
    _run("p1", "flowspec", new=11, decode_ms=1000, wall_ms=1200, steps=5, accepted=1.0, per_step=2.0, rounds=2,
         noops=1, drafter_ms=60, busy={"verifier": 100, "stage-10": 50, "stage-2": 600}),
    _run("p1", "chunk", new=11, decode_ms=2000, wall_ms=2200, steps=4, accepted=1.5, per_step=2.5, rounds=4,
         noops=0, drafter_ms=40, busy={"stage-2": 300, "verifier": 50, "stage-10": 50}),
    _ar("p1", new=11, decode_ms=4000),
    _run("p2", "flowspec", new=21, decode_ms=3000, wall_ms=3500, steps=10, accepted=0.5, per_step=1.5, rounds=3,
         noops=2, drafter_ms=120, busy={"stage-2": 900, "verifier": 200, "stage-10": 50}),
    RunRecord("p2", "chunk", False, error="chunk: timed out"),
    _ar("p2", new=21, decode_ms=8000),
]


def test_one_row_per_mode_in_first_seen_order():
    assert [s.mode for s in summarize(RECORDS)] == ["flowspec", "chunk", "ar"]


def test_pooled_rates_and_per_step_figures():
    flow = summarize(RECORDS)[0]
    assert (flow.runs, flow.failures, flow.new_tokens) == (2, 0, 32)
    assert flow.decode_tokens_per_s == pytest.approx(30 / 4.0)  # not the mean of 10 and 6.67 tok/s
    assert flow.tokens_per_s == pytest.approx(32 / 4.7)
    assert flow.accepted_per_step == pytest.approx((1.0 * 5 + 0.5 * 10) / 15)
    assert flow.tokens_per_step == pytest.approx((2.0 * 5 + 1.5 * 10) / 15)
    assert flow.tokens_per_round == pytest.approx(25 / 5)
    assert (flow.rounds_per_run, flow.steps_per_run) == (2.5, 7.5)
    assert flow.drafter_ms_per_step == pytest.approx(180 / 18)  # no-op steps count: the drafter ran for them
    assert flow.drafter_busy_ratio == pytest.approx(180 / 4700)


def test_busy_ratios_in_ring_order():
    flow = summarize(RECORDS)[0]
    assert list(flow.busy_ratio) == ["stage-2", "stage-10", "verifier"]
    assert flow.busy_ratio["stage-2"] == pytest.approx(1500 / 4700)
    assert flow.busy_ratio["verifier"] == pytest.approx(300 / 4700)
    assert sorted(["verifier", "x", "stage-3", "stage-1"], key=service_order) == ["stage-1", "stage-3", "verifier", "x"]


def test_failures_are_counted_not_averaged():
    chunk = summarize(RECORDS)[1]
    assert (chunk.runs, chunk.failures, chunk.new_tokens) == (1, 1, 11)
    assert chunk.decode_tokens_per_s == pytest.approx(10 / 2.0)


def test_speedups_use_the_prompts_both_modes_completed():
    flow, chunk, ar = summarize(RECORDS)
    assert flow.speedup["chunk"] == pytest.approx((10 / 1.0) / (10 / 2.0))  # p1 only: chunk failed on p2
    assert flow.speedup["ar"] == pytest.approx((30 / 4.0) / (30 / 12.0))
    assert chunk.speedup["ar"] == pytest.approx((10 / 2.0) / (10 / 4.0))
    assert chunk.speedup["chunk"] == pytest.approx(1.0) and ar.speedup["ar"] == pytest.approx(1.0)


def test_missing_baseline_and_all_failed_mode():
    records = [*RECORDS[:1], RunRecord("p1", "pipedec", False, error="boom")]
    flow, pipedec = summarize(records)
    assert flow.speedup == {"chunk": None, "ar": None, "local": None}
    assert (pipedec.runs, pipedec.failures, pipedec.decode_tokens_per_s, pipedec.busy_ratio) == (0, 1, 0.0, {})
    assert summarize(records, baselines=("pipedec",))[0].speedup == {"pipedec": None}


def test_decode_rate_edge_cases():
    assert decode_rate([]) == 0.0
    one_token = _stats(1, 0.0, 5.0, 0, 0.0, 0.0, 0, 0, 0.0, {})
    assert decode_rate([one_token]) == 0.0


def test_agreement_counts_prompts_equal_to_the_local_baseline():
    records = [
        RunRecord("p1", "local", True, token_ids=(1, 2)), RunRecord("p2", "local", True, token_ids=(3,)),
        RunRecord("p1", "ar", True, token_ids=(1, 2)), RunRecord("p2", "ar", True, token_ids=(3, 4)),
        RunRecord("p1", "flowspec", False, error="boom"), RunRecord("p3", "chunk", True, token_ids=(9,)),
    ]
    assert agreement(records) == {"ar": (1, 2)}
