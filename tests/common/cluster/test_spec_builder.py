"""One ClusterSpec builder: what the user asked, placed on hosts and ports, pinned or not, never patched after."""

from __future__ import annotations

import itertools

import pytest

from common.cluster.settings import Admission, ClusterSpec, Timeouts
from common.cluster.spec_builder import ClusterRequest, PinError, Pinning, build_spec, ports_needed
from common.speculation.modes import DraftSettings

RANGES = [(0, 3), (3, 6), (6, 9), (9, 12)]


def _build(asked: ClusterRequest, ranges=RANGES, first_port: int = 7000) -> ClusterSpec:
    ports = itertools.count(first_port)
    return build_spec(asked, ranges, lambda name: f"host-{name}", lambda _: next(ports))


def test_every_asked_setting_reaches_the_spec():
    asked = ClusterRequest(base="/b", draft="/d", draft_vocab=64, dtype="bfloat16", device="cuda", threads=3,
                           row_invariant=False, draft_settings=DraftSettings(top_k=2),
                           timeouts=Timeouts(request_timeout_s=9.0), admission=Admission(max_prompt_tokens=100),
                           default_mode="ar")
    spec = _build(asked)
    assert (spec.base, spec.draft, spec.draft_vocab, spec.dtype, spec.device, spec.threads) == (
        "/b", "/d", 64, "bfloat16", "cuda", 3)
    assert not spec.row_invariant and spec.draft_settings.top_k == 2 and spec.default_mode == "ar"
    assert spec.timeouts.request_timeout_s == 9.0 and spec.admission.max_prompt_tokens == 100
    assert ClusterSpec.from_json(spec.to_json()) == spec


def test_services_take_their_hosts_and_distinct_ports_scheduler_first():
    spec = _build(ClusterRequest(base="/b"))
    assert spec.scheduler.host == "host-scheduler" and [s.host for s in spec.stages] == [
        f"host-stage-{i}" for i in range(1, 5)]
    assert (spec.scheduler.report_port, spec.scheduler.client_port, spec.scheduler.metrics_port) == (7000, 7001, 7002)
    ports = [p for place in (spec.scheduler, *spec.ring) for p in (*(int(e.rsplit(":", 1)[1])
                                                                     for e in place.endpoints), place.metrics_port)]
    assert len(ports) == len(set(ports)) == ports_needed(4)
    assert [s.layers for s in spec.stages] == RANGES and all(not p.cpus for p in spec.ring)


def test_pinning_gives_each_ring_service_its_own_consecutive_cores():
    spec = _build(ClusterRequest(base="/b", threads=7, pinning=Pinning(2, 16)))
    assert [p.cpus for p in spec.ring] == ["0-1", "2-3", "4-5", "6-7", "8-9", "10-11"]
    assert spec.scheduler.cpus == spec.verifier.cpus and spec.threads == 2  # threads follow the cores


def test_too_few_cores_is_one_clear_error():
    with pytest.raises(PinError, match="6 services x 3 cores need 18 cores; this host has 16"):
        _build(ClusterRequest(base="/b", pinning=Pinning(3, 16)))
