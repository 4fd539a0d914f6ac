"""A bench phase's per-service load from two Prometheus scrapes: busy ratio, rows and requests per forward."""

from __future__ import annotations

from prometheus_client import generate_latest

from common.observability.metrics import ServiceMetrics
from services.bench.service_load import Counters, between, parse, scrape


def _page(metrics: ServiceMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_two_scrapes_give_the_phase_busy_ratio_and_rows_and_requests_per_forward():
    metrics = ServiceMetrics()
    metrics.busy_seconds.inc(1.0)
    metrics.forward_rows.observe(3)
    metrics.forward_requests.observe(1)
    before = parse(_page(metrics))
    assert before == Counters(busy_s=1.0, forwards=1, rows=3, requests=1)
    metrics.busy_seconds.inc(3.0)
    for rows, requests in ((6, 2), (10, 3)):  # two shared forwards during the phase
        metrics.forward_rows.observe(rows)
        metrics.forward_requests.observe(requests)
    load = between({"drafter": before}, {"drafter": parse(_page(metrics)), "stage-1": before}, wall_s=4.0)
    assert set(load) == {"drafter"}, "a service missing from either scrape is left out"
    assert load["drafter"].busy_ratio == 0.75
    assert load["drafter"].forwards == 2
    assert load["drafter"].rows_per_forward == 8.0
    assert load["drafter"].requests_per_forward == 2.5


def test_a_service_without_forwards_or_endpoint_reports_no_made_up_numbers():
    idle = between({"s": Counters(busy_s=2.0)}, {"s": Counters(busy_s=2.0)}, wall_s=1.0)["s"]
    assert (idle.busy_ratio, idle.forwards, idle.rows_per_forward, idle.requests_per_forward) == (0.0, 0, 0.0, 0.0)
    assert scrape({"no-endpoint": "", "nobody": "http://127.0.0.1:9/metrics"}, timeout_s=0.5) == {}
