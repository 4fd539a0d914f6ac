"""Emulating a LAN of boards on one many-core host: every service on cores of its own (taskset).

The cores are handed out where the spec is built (common.cluster.spec_builder), from the :class:`Pinning`
that ``bench --pin`` asks for.
"""

from __future__ import annotations

import os

from common.cluster.settings import ClusterSpec
from common.cluster.spec_builder import PinError, Pinning

__all__ = ["PinError", "Pinning", "pinning_for", "stage_cpus"]


def pinning_for(cores_per_service: int) -> Pinning:
    """Every ring service on ``cores_per_service`` cores of this host's own."""
    return Pinning(cores_per_service, os.cpu_count() or 1)


def stage_cpus(spec: ClusterSpec) -> str:
    """Cores of stage 1 (empty when unpinned): where the ``local`` baseline runs, one board's worth."""
    return spec.stages[0].cpus if spec.stages else ""
