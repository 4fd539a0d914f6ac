"""Request timelines: spans are kept only for traced requests and become Chrome trace events."""

from __future__ import annotations

import time

from common.observability import trace


def test_spans_are_recorded_only_for_traced_requests():
    trace.start("r1")
    with trace.bound("r1"), trace.span("forward"):
        time.sleep(0.002)
    with trace.bound("r2"), trace.span("forward"):  # never started: nothing kept
        pass
    trace.record("recv", "r1", 5_000_000, 6_000_000)
    spans = trace.finish("r1")
    assert len(spans) == 6
    assert trace.SPAN_KINDS[spans[0]] == "forward" and spans[2] >= 2000  # microseconds
    assert spans[3:] == (trace.SPAN_KINDS.index("recv"), 5000, 1000)
    assert trace.finish("r2") == () and trace.finish("r1") == ()


def test_chrome_trace_has_one_process_per_service_and_one_event_per_span():
    forward, draft = trace.SPAN_KINDS.index("forward"), trace.SPAN_KINDS.index("draft")
    doc = trace.chrome_trace([
        {"label": "flowspec p0", "spans": {"stage-1": (forward, 100, 50, forward, 200, 50), "drafter": (draft, 90, 5)}},
    ])
    events = doc["traceEvents"]
    names = {e["args"]["name"]: e["pid"] for e in events if e["name"] == "process_name"}
    assert list(names) == ["drafter", "stage-1"]  # ring order
    complete = [e for e in events if e["ph"] == "X"]
    assert [(e["name"], e["ts"], e["dur"], e["pid"]) for e in complete] == [
        ("forward", 100, 50, names["stage-1"]), ("forward", 200, 50, names["stage-1"]), ("draft", 90, 5, names["drafter"])]
    assert any(e["ph"] == "i" and e["name"] == "flowspec p0" and e["ts"] == 90 for e in events)
    assert trace.busy_by_kind((forward, 100, 1500, forward, 200, 500)) == {"forward": 2.0}


def test_per_forward_splits_model_time_from_bookkeeping():
    code = trace.SPAN_KINDS.index
    flat = (code("forward"), 0, 4000, code("recv"), 0, 200, code("forward"), 0, 6000, code("send"), 0, 300,
            code("prune"), 0, 500)
    assert trace.per_forward(flat) == (5.0, 0.5, 2)
    assert trace.per_forward((code("schedule"), 0, 1000)) == (0.0, 1.0, 0)


def test_counters_become_perfetto_counter_tracks_and_are_not_busy_time():
    trace.start("rc")
    with trace.bound("rc"), trace.span("draft"):
        trace.counter("tree_levels", 4)
        trace.counter("tree_width", 12)
    flat = trace.finish("rc")
    assert trace.busy_by_kind(flat).keys() == {"draft"}
    assert trace.per_forward(flat)[2] == 1
    events = trace.chrome_trace([{"label": "flowspec p0", "spans": {"drafter": flat}}])["traceEvents"]
    counters = {e["name"]: e["args"] for e in events if e["ph"] == "C"}
    assert counters == {"tree_levels": {"tree_levels": 4}, "tree_width": {"tree_width": 12}}
