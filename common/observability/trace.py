"""Per-request timelines: what a service did and when, for ``flowring bench --trace``.

A service records *spans* (a kind, a start and a duration) for the requests that asked to be traced;
the runtime binds the request a message belongs to before the core handles it, so a core only says
``with span("forward"):``. Spans travel to the scheduler with the service's end-of-request stats as a
flat tuple of ints (kind code, start in microseconds since the epoch, duration in microseconds) and
become Chrome/Perfetto trace-event JSON in :func:`chrome_trace`. A *counter* (:func:`counter`) is a
sampled value instead of a span (its triple holds the value where a span holds its duration); it
becomes a Perfetto counter track (e.g. the drafter's ``tree_levels`` and ``tree_width``).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

SPAN_KINDS = ("recv", "forward", "prune", "send", "draft", "verify", "schedule")
"""``recv``: decoding a message; ``forward``: a model forward (stage layers, verifier head); ``prune``:
applying a prune event (KV compaction); ``send``: encoding and queueing a message; ``draft``: a draft
model forward and tree growth; ``verify``: acceptance of a segment; ``schedule``: a scheduler decision.
Time in no span is time the service waited."""
COUNTER_KINDS = ("tree_levels", "tree_width")
"""``tree_levels``, ``tree_width``: the shape of the drafter's growth under way (common.speculation.tree_policy)."""
_CODE = {kind: i for i, kind in enumerate(SPAN_KINDS + COUNTER_KINDS)}
MAX_SPANS_PER_REQUEST = 50_000  # bounds memory if a traced request runs very long

_current: contextvars.ContextVar[str] = contextvars.ContextVar("trace_request", default="")
_spans: dict[str, list[int]] = {}  # traced request id -> flat (code, start_us, dur_us) triples


def start(request_id: str) -> None:
    """Record spans for ``request_id`` from now on."""
    _spans[request_id] = []


def finish(request_id: str) -> tuple[int, ...]:
    """Stop recording ``request_id`` and return its spans (empty when it was not traced)."""
    return tuple(_spans.pop(request_id, ()))


def record(kind: str, request_id: str, started_ns: int, ended_ns: int) -> None:
    """Record a span timed by the caller (e.g. decoding, before the request was known)."""
    spans = _spans.get(request_id)
    if spans is not None and len(spans) < 3 * MAX_SPANS_PER_REQUEST:
        spans.extend((_CODE[kind], started_ns // 1000, (ended_ns - started_ns) // 1000))


def counter(kind: str, value: int, request_id: str | None = None) -> None:
    """Sample a counter of ``kind`` now, for the bound (or given) request, if it is traced."""
    spans = _spans.get(_current.get() if request_id is None else request_id)
    if spans is not None and len(spans) < 3 * MAX_SPANS_PER_REQUEST:
        spans.extend((_CODE[kind], time.time_ns() // 1000, int(value)))


def is_span(code: int) -> bool:
    """Whether a triple's code is a span's (else a counter's)."""
    return code < len(SPAN_KINDS)


@contextlib.contextmanager
def bound(request_id: str) -> Iterator[None]:
    """Spans opened inside belong to ``request_id``."""
    token = _current.set(request_id)
    try:
        yield
    finally:
        _current.reset(token)


@contextlib.contextmanager
def span(kind: str, request_id: str | None = None) -> Iterator[None]:
    """Time the block as one span of ``kind`` for the bound (or given) request, if it is traced."""
    spans = _spans.get(_current.get() if request_id is None else request_id)
    if spans is None:
        yield
        return
    started = time.time_ns()
    try:
        yield
    finally:
        if len(spans) < 3 * MAX_SPANS_PER_REQUEST:
            spans.extend((_CODE[kind], started // 1000, (time.time_ns() - started) // 1000))


def now_ns() -> int:
    """The clock spans use (wall clock, so services on one host share a time line)."""
    return time.time_ns()


def chrome_trace(requests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Trace-event JSON: one process per service, one complete event per span, one marker per request.

    ``requests``: ``{"label": str, "spans": {service: flat ints}}`` per traced request.
    """
    services = sorted({name for r in requests for name in r["spans"]}, key=_service_rank)
    pid = {name: i + 1 for i, name in enumerate(services)}
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid[name], "args": {"name": name}} for name in services
    ] + [{"ph": "M", "name": "process_sort_index", "pid": pid[name], "args": {"sort_index": pid[name]}}
         for name in services]
    for r in requests:
        first = min((flat[1] for flat in r["spans"].values() if flat), default=0)
        events.append({"ph": "i", "s": "g", "name": r["label"], "ts": first, "pid": 0, "tid": 0})
        for name, flat in r["spans"].items():
            for code, ts, dur in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
                if not is_span(code):
                    kind = COUNTER_KINDS[code - len(SPAN_KINDS)]
                    events.append({"ph": "C", "name": kind, "ts": ts, "pid": pid[name], "args": {kind: dur}})
                    continue
                events.append({"ph": "X", "name": SPAN_KINDS[code], "ts": ts, "dur": max(dur, 1),
                               "pid": pid[name], "tid": 0, "args": {"request": r["label"]}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def busy_by_kind(flat: Sequence[int]) -> dict[str, float]:
    """Milliseconds spent in each span kind."""
    out: dict[str, float] = {}
    for code, dur in zip(flat[0::3], flat[2::3], strict=True):
        if not is_span(code):
            continue
        out[SPAN_KINDS[code]] = out.get(SPAN_KINDS[code], 0.0) + dur / 1e3
    return out


def per_forward(flat: Sequence[int]) -> tuple[float, float, int]:
    """(model ms per forward, ms outside the model per forward, forwards) of one service's spans.

    Outside the model: receiving, sending, pruning, verifying, drafting bookkeeping is not counted
    (a drafter's ``draft`` spans are its model work).
    """
    busy = busy_by_kind(flat)
    model_kinds = ("forward", "draft")
    forwards = sum(1 for code in flat[0::3] if is_span(code) and SPAN_KINDS[code] in model_kinds)
    model_ms = sum(busy.get(k, 0.0) for k in model_kinds)
    outside_ms = sum(v for k, v in busy.items() if k not in model_kinds)
    return (model_ms / forwards, outside_ms / forwards, forwards) if forwards else (0.0, outside_ms, 0)


def _service_rank(name: str) -> tuple[int, int, str]:
    """Ring order: drafter, stage-1..N, verifier, scheduler, then anything else by name."""
    if name.startswith("stage-") and name[6:].isdigit():
        return (1, int(name[6:]), name)
    order = {"drafter": 0, "verifier": 2, "scheduler": 3}
    return (order.get(name, 4), 0, name)
