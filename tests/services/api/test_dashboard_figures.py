"""The dashboard's live figures: rates between scrapes, restarts, tokens streamed, traced spans kept."""

from __future__ import annotations

import pytest

from services.api.dashboard.rates import ACCEPTED, BUSY, DRAFTS, TTFT_COUNT, TTFT_SUM, History, Sample
from services.api.dashboard.recorder import KEEP_TRACES, TOKEN_WINDOW_S, Recorder


def counters(busy=0.0, drafts=0.0, accepted=0.0, ttft_sum=0.0, ttft_count=0.0) -> dict[str, float]:
    return {BUSY: busy, DRAFTS: drafts, ACCEPTED: accepted, TTFT_SUM: ttft_sum, TTFT_COUNT: ttft_count}


def test_rates_over_the_window():
    history = History(window_s=10.0)
    assert history.figures("stage-1").busy_ratio is None  # nothing scraped yet
    history.add("stage-1", Sample(100.0, 7, counters(busy=1.0)))
    assert history.figures("stage-1").busy_ratio is None  # one sample: no rate yet
    history.add("stage-1", Sample(102.0, 7, counters(busy=2.5)))
    assert history.figures("stage-1").busy_ratio == pytest.approx(0.75)
    history.add("scheduler", Sample(100.0, 3, counters(drafts=10, accepted=20, ttft_sum=1.0, ttft_count=4)))
    history.add("scheduler", Sample(104.0, 3, counters(drafts=14, accepted=32, ttft_sum=1.6, ttft_count=6)))
    figures = history.figures("scheduler")
    assert figures.acceptance == pytest.approx(1 + 12 / 4)
    assert figures.acceptance_total == pytest.approx(1 + 32 / 14)
    assert figures.ttft_ms == pytest.approx(300.0) and figures.ttft_total_ms == pytest.approx(1600 / 6)


def test_the_window_slides_and_keeps_two_ends():
    history = History(window_s=10.0)
    for t, busy in ((0.0, 0.0), (5.0, 5.0), (11.0, 5.0), (16.0, 5.0)):
        history.add("drafter", Sample(t, 1, counters(busy=busy)))
    # Samples older than the window's start are dropped, but the one at or before it stays: 5 s -> 16 s.
    assert history.figures("drafter").busy_ratio == pytest.approx(0.0)
    history.add("drafter", Sample(26.0, 1, counters(busy=5.0)))
    assert history.figures("drafter").busy_ratio == pytest.approx(0.0)


def test_a_new_pid_or_a_counter_going_back_is_a_restart():
    history = History()
    history.add("stage-2", Sample(0.0, 10, counters(busy=4.0)))
    history.add("stage-2", Sample(1.0, 10, counters(busy=4.5)))
    history.add("stage-2", Sample(2.0, 11, counters(busy=0.1)))
    assert history.restarts == {"stage-2": 1}
    assert history.figures("stage-2").busy_ratio is None  # the new process's history starts again
    history.add("stage-2", Sample(3.0, 11, counters(busy=0.6)))
    assert history.figures("stage-2").busy_ratio == pytest.approx(0.5)
    history.add("stage-2", Sample(4.0, 11, counters(busy=0.2)))  # went back without a pid change
    assert history.figures("stage-2").busy_ratio is None and history.restarts == {"stage-2": 1}


def test_tokens_per_second_over_the_last_seconds():
    recorder = Recorder()
    recorder.tokens(10, now=100.0)
    recorder.tokens(15, now=102.0)
    assert recorder.tokens_per_s(now=103.0) == pytest.approx(25 / TOKEN_WINDOW_S)
    assert recorder.tokens_per_s(now=100.0 + TOKEN_WINDOW_S + 1.0) == pytest.approx(15 / TOKEN_WINDOW_S)
    assert recorder.tokens_per_s(now=200.0) == 0.0


def test_answers_and_traces_are_kept_bounded():
    recorder = Recorder()
    stats = {"new_tokens": 12, "prefill_ms": 40.0, "wall_ms": 300.0, "decode_tokens_per_s": 42.0, "mode": "flowspec",
             "request_id": "abcdef123456"}
    recorder.finished(True, stats, now=10.0)  # not traced: an answer, no timeline
    assert recorder.traces() == [] and recorder.answers()[0].new_tokens == 12
    for i in range(KEEP_TRACES + 2):
        recorder.finished(True, {**stats, "trace": {"stage-1": (1, 1_000_000 * i, 500)}}, now=20.0 + i)
    kept = recorder.traces()
    assert len(kept) == KEEP_TRACES and kept[-1]["spans"] == {"stage-1": [1, 1_000_000 * (KEEP_TRACES + 1), 500]}
    assert kept[-1]["label"] == "flowspec abcdef12"
    assert [t["ended_s"] for t in recorder.traces(since_s=20.0 + KEEP_TRACES)] == [20.0 + KEEP_TRACES + 1]
