"""Emulating a LAN of boards on one many-core host: every service on cores of its own (taskset)."""

from __future__ import annotations

from dataclasses import replace

from common.cluster.settings import ClusterSpec


class PinError(ValueError):
    """The host has too few cores to give every service its own."""


def pin_services(spec: ClusterSpec, cores_per_service: int, host_cores: int) -> ClusterSpec:
    """Give the drafter, each stage and the verifier ``cores_per_service`` consecutive cores, in ring order.

    The scheduler shares the verifier's cores: it only routes small messages. Torch threads per service
    follow the cores each has.
    """
    ring = spec.ring
    needed = len(ring) * cores_per_service
    if needed > host_cores:
        raise PinError(f"{len(ring)} services x {cores_per_service} cores need {needed} cores; this host has "
                       f"{host_cores}")
    cpus = {p.name: f"{i * cores_per_service}-{(i + 1) * cores_per_service - 1}" for i, p in enumerate(ring)}
    return replace(
        spec,
        threads=cores_per_service,
        drafter=replace(spec.drafter, cpus=cpus[spec.drafter.name]),
        stages=tuple(replace(s, cpus=cpus[s.name]) for s in spec.stages),
        verifier=replace(spec.verifier, cpus=cpus[spec.verifier.name]),
        scheduler=replace(spec.scheduler, cpus=cpus[spec.verifier.name]),
    )


def stage_cpus(spec: ClusterSpec) -> str:
    """Cores of stage 1 (empty when unpinned): where the ``local`` baseline runs, one board's worth."""
    return spec.stages[0].cpus if spec.stages else ""
