"""Every service of a tiny-model process ring serves Prometheus text; the numbers agree with the requests."""

from __future__ import annotations

import dataclasses
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.speculation.modes import DraftSettings
from services.launcher import client_for, free_ports, plan_local, start, stop
from tests.support.tiny_models import make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), family="qwen2", seed=3)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``(sample name, sorted labels) -> value`` of one endpoint."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_endpoints_of_every_service(pair, tmp_path):
    base, draft = pair
    spec = plan_local(base, draft, 2, draft_settings=TREES, threads=1)
    ports = iter(free_ports("127.0.0.1", 5))
    spec = dataclasses.replace(
        spec,
        drafter=dataclasses.replace(spec.drafter, metrics_port=next(ports)),
        stages=tuple(dataclasses.replace(s, metrics_port=next(ports)) for s in spec.stages),
        verifier=dataclasses.replace(spec.verifier, metrics_port=next(ports)),
        scheduler=dataclasses.replace(spec.scheduler, metrics_port=next(ports)),
    )
    start(spec, tmp_path / "run")
    try:
        with client_for(spec, 120) as client:
            replies = [client.generate("", prompt_ids=(3 + i, 40, 41, 42), max_new_tokens=12) for i in range(3)]
            assert all(r.ok for r in replies), [r.error for r in replies]
            listed = {s.name: s.metrics for s in client.status().services}
        samples = {p.name: scrape(p.metrics_url) for p in (spec.scheduler, *spec.ring)}
    finally:
        stop(tmp_path / "run")
    assert listed == {p.name: f"http://127.0.0.1:{p.metrics_port}/metrics" for p in (spec.scheduler, *spec.ring)}
    sched = samples["scheduler"]
    steps = sum(r.stats["steps"] for r in replies)
    assert total(sched, "flowring_requests_total", outcome="ok") == 3
    assert total(sched, "flowring_request_latency_seconds_count") == 3
    assert total(sched, "flowring_time_to_first_token_seconds_count") == 3
    assert total(sched, "flowring_prune_events_total") == steps
    assert total(sched, "flowring_round_restarts_total") == sum(r.stats["rounds"] for r in replies)
    assert total(sched, "flowring_expand_commands_total") >= steps
    drafts = total(sched, "flowring_spec_decode_num_drafts_total")
    accepted = total(sched, "flowring_spec_decode_num_accepted_tokens_total")
    assert drafts >= steps and accepted <= total(sched, "flowring_spec_decode_num_draft_tokens_total")
    assert accepted >= sum(r.stats["accepted_per_step"] * r.stats["steps"] for r in replies) - 1e-6
    stage = samples["stage-1"]
    assert total(stage, "flowring_busy_seconds_total") > 0
    for ring_service in (stage, samples["verifier"]):  # every forward counted: its rows, its requests (>= 1)
        forwards = total(ring_service, "flowring_forward_requests_count")
        assert forwards > 0 and total(ring_service, "flowring_forward_rows_count") == forwards
        assert total(ring_service, "flowring_forward_rows_sum") >= total(ring_service, "flowring_forward_requests_sum")
        assert total(ring_service, "flowring_forward_requests_sum") >= forwards
    assert total(stage, "flowring_messages_handled_total", kind="segment") > 0
    assert total(stage, "flowring_messages_handled_total", kind="prune") == steps
    assert total(stage, "flowring_hop_bytes_sent_total", hop="stage-2") > 0
    assert total(stage, "flowring_hop_send_seconds_count", hop="stage-2") > 0
    assert total(samples["verifier"], "flowring_hop_bytes_sent_total", hop="scheduler") > 0
    assert total(samples["drafter"], "flowring_messages_handled_total", kind="expand") >= steps
    assert all(total(s, "flowring_messages_rejected_total") == 0 for s in samples.values())
