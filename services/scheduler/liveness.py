"""Which ring services are alive: when each was last heard from, and what its last heartbeat said.

A service is healthy iff heard (Ready or Heartbeat) within ``timeout_s``. Pure bookkeeping: the shell
passes the clock in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.cluster.settings import ClusterSpec, Placement
from common.wire.client import ServiceHealth
from common.wire.reports import Heartbeat, Ready


@dataclass(frozen=True)
class _Heard:
    at: float  # monotonic seconds
    pid: int
    heartbeat: Heartbeat | None  # None until the first heartbeat after Ready


class Liveness:
    def __init__(self, services: Sequence[str], timeout_s: float) -> None:
        self._services = list(services)
        self.timeout_s = timeout_s
        self._heard: dict[str, _Heard] = {}

    def hear(self, msg: Ready | Heartbeat, now: float) -> int:
        """Record a sign of life; one from a service not in the cluster is ignored. Returns the service's
        previous pid when this is a Ready from a new process of it (restarted), else 0."""
        if msg.service not in self._services:
            return 0
        beat = msg if isinstance(msg, Heartbeat) else None
        previous = self._heard.get(msg.service)
        if beat is None and previous is not None and previous.pid == msg.pid:
            beat = previous.heartbeat
        self._heard[msg.service] = _Heard(now, msg.pid, beat)
        restarted = isinstance(msg, Ready) and previous is not None and previous.pid != msg.pid
        return previous.pid if restarted and previous is not None else 0

    def healthy(self, name: str, now: float) -> bool:
        heard = self._heard.get(name)
        return heard is not None and now - heard.at <= self.timeout_s

    def all_healthy(self, now: float) -> bool:
        return all(self.healthy(name, now) for name in self._services)

    def silent(self, since: float, now: float) -> list[tuple[str, float]]:
        """Services not heard from for over ``timeout_s`` counting from ``since`` at the earliest,
        with the seconds of silence."""
        out = []
        for name in self._services:
            heard = self._heard.get(name)
            quiet_s = now - max(heard.at if heard else since, since)
            if quiet_s > self.timeout_s:
                out.append((name, quiet_s))
        return out

    def health(self, spec: ClusterSpec, now: float) -> tuple[ServiceHealth, ...]:
        """One row per ring service, in ring order."""
        return tuple(self._row(spec, place, now) for place in spec.ring)

    def _row(self, spec: ClusterSpec, place: Placement, now: float) -> ServiceHealth:
        row = describe(spec, place)
        heard = self._heard.get(place.name)
        if heard is None:
            return row
        beat = heard.heartbeat
        return ServiceHealth(
            role=row.role, name=row.name, host=row.host, pid=heard.pid, endpoints=row.endpoints, layers=row.layers,
            healthy=self.healthy(place.name, now), last_seen_s=round(now - heard.at, 3),
            uptime_s=beat.uptime_s if beat else 0.0, in_flight=beat.in_flight if beat else 0,
            kv_cache_bytes=beat.kv_cache_bytes if beat else 0, last_step_ms=beat.last_step_ms if beat else 0.0,
            metrics=row.metrics,
        )


def describe(spec: ClusterSpec, place: Placement) -> ServiceHealth:
    """What the cluster file says about a service (never heard from: unhealthy, pid 0)."""
    return ServiceHealth(
        role=role_of(spec, place), name=place.name, host=place.host, endpoints=place.endpoints,
        layers=tuple(place.layers) if place in spec.stages else (), metrics=place.metrics_url,
    )


def role_of(spec: ClusterSpec, place: Placement) -> str:
    if place is spec.scheduler:
        return "scheduler"
    if place is spec.drafter:
        return "drafter"
    if place is spec.verifier:
        return "verifier"
    return "stage"
