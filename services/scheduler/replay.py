"""Requests whose ring lost a service: interrupted, then replayed once the ring is whole again (pure).

A ring service that dies (silent past the liveness timeout, or back under a new pid after its
supervisor restarted it) takes every running request's state with it. Each such request is
interrupted: its attempt ends on every service, its committed output stays. Once every ring service
is healthy again it is resumed through the ring from its committed context (prompt + output so far),
so the client's output continues where it was. A request still waiting ``bound_s`` after its outage
was noticed fails with an error naming the request and the service. No I/O: the shell passes the clock
in and dispatches the commands and replies that come out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from common.wire.reports import Ready
from services.scheduler.attempts import request_id_of

if TYPE_CHECKING:
    from services.scheduler.core import Outbound, SchedulerCore
    from services.scheduler.liveness import Liveness

log = structlog.get_logger()


@dataclass(frozen=True)
class Outage:
    service: str  # the ring service that died or went silent
    cause: str  # e.g. "went silent (no heartbeat for 3.1 s)", "restarted (pid 41 -> 97)"
    since: float  # when the scheduler noticed


class Replays:
    """Interrupted requests, each with the outage that interrupted it, waiting to resume."""

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self.waiting: dict[str, Outage] = {}  # request id -> outage

    def interrupted(self, request_id: str, outage: Outage) -> None:
        self.waiting[request_id] = outage

    def due(self, ring_healthy: bool, now: float) -> tuple[list[tuple[str, Outage]], list[tuple[str, str]]]:
        """Requests to resume now (the ring is whole again), and requests that fail now, with their error."""
        if ring_healthy:
            resume = list(self.waiting.items())
            self.waiting.clear()
            return resume, []
        late = [(rid, outage) for rid, outage in self.waiting.items() if now - outage.since > self.bound_s]
        for rid, _ in late:
            del self.waiting[rid]
        return [], [(rid, self.error(rid, outage)) for rid, outage in late]

    def error(self, request_id: str, outage: Outage) -> str:
        return (f"request {request_id_of(request_id)} failed: service {outage.service} {outage.cause}, and the ring did not "
                f"recover within {self.bound_s:g} s")


def recover(core: SchedulerCore, liveness: Liveness, replays: Replays, now: float) -> list[Outbound]:
    """Interrupt the requests of a ring that lost a service (silent past the liveness timeout); resume the
    interrupted ones once the ring is whole again, or fail those past the recovery bound."""
    out: list[Outbound] = []
    for request_id, job in list(core.jobs.items()):
        silent = request_id not in replays.waiting and liveness.silent(job.started, now)
        if silent:
            name, quiet_s = silent[0]
            cause = f"went silent (no heartbeat for {quiet_s:.1f} s, liveness timeout {liveness.timeout_s:g} s)"
            out += _interrupt(core, replays, request_id, Outage(name, cause, now))
    resume, failed = replays.due(liveness.all_healthy(now), now)
    for request_id, outage in resume:
        job = core.jobs.get(request_id)
        if job is None:
            continue  # cancelled or timed out while it waited
        log.warning("request_replayed", request_id=request_id_of(request_id), service=outage.service,
                    recovery_s=round(now - outage.since, 3), committed=len(job.output))
        out += core.resume(request_id)
    for request_id, error in failed:
        log.error("request_not_recovered", request_id=request_id_of(request_id), error=error)
        out += core.fail(request_id, error)
    return out


def restarted(core: SchedulerCore, replays: Replays, ready: Ready, old_pid: int, now: float) -> list[Outbound]:
    """A ring service is back under a new pid: every request in the ring lost its state there."""
    outage = Outage(ready.service, f"restarted (pid {old_pid} -> {ready.pid})", now)
    log.warning("service_back", service=ready.service, old_pid=old_pid, pid=ready.pid)
    out: list[Outbound] = []
    for request_id in [r for r in core.jobs if r not in replays.waiting]:
        out += _interrupt(core, replays, request_id, outage)
    return out


def _interrupt(core: SchedulerCore, replays: Replays, request_id: str, outage: Outage) -> list[Outbound]:
    """End the request's attempt everywhere; a running one then waits to be replayed."""
    if request_id in core.running:
        log.warning("request_interrupted", request_id=request_id_of(request_id), service=outage.service,
                    cause=outage.cause)
        replays.interrupted(request_id, outage)
    return core.interrupt(request_id, f"interrupted: {outage.service} {outage.cause}")
