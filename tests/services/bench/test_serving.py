"""What the serving measurements decide from their timings: equality, slowdowns, speed-up, failure."""

from __future__ import annotations

import pytest

from services.bench.concurrency import ConcurrencyResult, Phase, TimedRun, percentile
from services.bench.ttft import TtftResult
from services.cli.bench_serving import ServingReport


def _phase(wall_s: float, *runs: TimedRun) -> Phase:
    return Phase(runs, wall_s)


SOLO = _phase(4.0, TimedRun("a", True, (1, 2, 3, 4), 10.0, 100.0), TimedRun("b", True, (5, 6, 7, 8), 20.0, 200.0),
              TimedRun("c", True, (9, 9), 30.0, 300.0))


def test_equal_slowdown_and_speedup_per_prompt():
    together = _phase(2.0, TimedRun("a", True, (1, 2, 3, 4), 15.0, 150.0),
                      TimedRun("b", True, (5, 6, 7, 0), 25.0, 800.0), TimedRun("c", False, error="busy"))
    r = ConcurrencyResult("flowspec", 3, SOLO, together)
    assert r.equal() == [True, False, False]
    assert r.slowdowns() == [pytest.approx(1.5), pytest.approx(4.0), None]
    assert (SOLO.new_tokens, together.new_tokens) == (10, 8)
    assert r.speedup == pytest.approx((8 / 2.0) / (10 / 4.0))
    assert [f.prompt_id for f in r.failures()] == ["c"]
    assert (together.ttft_median_ms, together.latency_max_ms) == (20.0, 800.0)
    assert (together.ttft_p95_ms, together.latency_p95_ms) == (pytest.approx(24.5), pytest.approx(767.5))
    assert SOLO.latency_p95_ms == pytest.approx(290.0)
    assert r.p95_latency_ratio == pytest.approx(767.5 / 290.0)
    summary = r.to_json()
    assert summary["concurrent"]["latency_ms_p95"] == pytest.approx(767.5)
    assert summary["equal_to_solo"] == {"equal": 1, "compared": 3}
    assert [q["slowdown"] for q in summary["requests"]][2] is None


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 95, 0.0), ([7.0], 95, 7.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.5), ([4.0, 1.0, 3.0, 2.0], 95, 3.85),
     ([1.0, 2.0, 3.0, 4.0], 100, 4.0), ([1.0, 2.0, 3.0, 4.0], 0, 1.0)],
)
def test_percentile_interpolates_between_the_nearest_ranks(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(
    "second, greedy, failed",
    [
        (TimedRun("b", True, (5, 6, 7, 8), 1.0, 2.0), True, False),
        (TimedRun("b", True, (5, 6, 7, 0), 1.0, 2.0), True, True),  # greedy output differs from solo
        (TimedRun("b", True, (5, 6, 7, 0), 1.0, 2.0), False, False),  # sampled: a difference is no failure
        (TimedRun("b", False, error="timeout"), False, True),
    ],
)
def test_report_fails_on_a_failed_request_or_a_greedy_difference(second, greedy, failed):
    solo = _phase(1.0, SOLO.runs[0], SOLO.runs[1])
    together = _phase(1.0, SOLO.runs[0], second)
    report = ServingReport((ConcurrencyResult("ar", 2, solo, together),), ())
    assert report.failed(greedy) is failed


def test_ttft_medians_ratio_and_failures():
    r = TtftResult("flowspec", 2, (10.0, 30.0, 20.0), (11.0, 33.0, 22.0, 40.0))
    assert (r.ring_median_ms, r.http_median_ms) == (20.0, 27.5)
    assert r.ratio == pytest.approx(27.5 / 20.0)
    assert not ServingReport((), (r,)).failed(greedy=True)
    assert ServingReport((), (TtftResult("ar", 1, (), (), ("http: refused",)),)).failed(greedy=True)
    assert TtftResult("ar", 1, (), ()).ratio == 0.0
