"""Which device each service of a cluster runs on: one GPU per stage when several are given."""

from __future__ import annotations

from dataclasses import replace

from common.cluster.settings import ClusterSpec
from common.models.devices import DeviceError, parse_devices


def spread(spec: ClusterSpec, devices: tuple[str, ...]) -> ClusterSpec:
    """``spec`` with its stages spread over ``devices`` in order (consecutive stages share a device when
    there are fewer devices than stages), the drafter on the first stage's device, the verifier on the last's.

    ``devices`` must be parsed names (``common.models.devices.parse_devices``), at most one per stage.
    """
    stages = len(spec.stages)
    if not stages:
        raise DeviceError("a cluster without stages has nothing to spread over devices")
    if len(devices) > stages:
        raise DeviceError(f"{len(devices)} devices for {stages} stage(s): give at most one device per stage")
    placed = tuple(replace(p, device=devices[i * len(devices) // stages]) for i, p in enumerate(spec.stages))
    return replace(spec, device=devices[0], stages=placed, drafter=replace(spec.drafter, device=placed[0].device),
                   verifier=replace(spec.verifier, device=placed[-1].device))


def spread_text(text: str, spec: ClusterSpec) -> ClusterSpec:
    """``spread`` over a comma-separated device list as ``flowring up --devices`` takes it."""
    return spread(spec, parse_devices(text))


def device_table(spec: ClusterSpec) -> list[tuple[str, str]]:
    """``(service, device)`` for every ring service, in ring order."""
    return [(p.name, spec.device_of(p.name)) for p in spec.ring]
