"""Pinning every service to cores of its own: the layout a many-core host uses to emulate boards."""

from __future__ import annotations

import pytest

from common.cluster.settings import ClusterSpec, Placement
from services.bench.pinning import PinError, pin_services, stage_cpus


def _spec(stages: int) -> ClusterSpec:
    return ClusterSpec(base="b", draft="d", stages=tuple(Placement(f"stage-{i + 1}") for i in range(stages)))


def test_each_ring_service_gets_its_own_consecutive_cores():
    spec = pin_services(_spec(4), 2, 16)
    assert [p.cpus for p in spec.ring] == ["0-1", "2-3", "4-5", "6-7", "8-9", "10-11"]
    assert spec.scheduler.cpus == spec.verifier.cpus and spec.threads == 2
    assert stage_cpus(spec) == "2-3"
    assert stage_cpus(_spec(2)) == ""


def test_too_few_cores_is_one_clear_error():
    with pytest.raises(PinError, match="6 services x 3 cores need 18 cores; this host has 16"):
        pin_services(_spec(4), 3, 16)
