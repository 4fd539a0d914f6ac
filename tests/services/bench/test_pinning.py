"""Pinning every service to cores of its own: the layout a many-core host uses to emulate boards."""

from __future__ import annotations

import os

from common.cluster.settings import ClusterSpec, Placement
from services.bench.pinning import pinning_for, stage_cpus


def test_the_local_baseline_runs_on_stage_one_cores_when_pinned():
    pinned = ClusterSpec(base="b", draft="d", stages=(Placement("stage-1", cpus="2-3"), Placement("stage-2")))
    assert stage_cpus(pinned) == "2-3"
    assert stage_cpus(ClusterSpec(base="b", draft="d", stages=(Placement("stage-1"),))) == ""


def test_pinning_asks_for_this_hosts_cores():
    pinning = pinning_for(3)
    assert pinning is not None and (pinning.cores_per_service, pinning.host_cores) == (3, os.cpu_count())
