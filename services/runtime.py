"""The I/O shell every ring service runs: poll with a timeout, decode, hand to the core, send.

Cores are state machines (``handle(message) -> [(destination, message)]``); this loop owns the
sockets and the logging. Every outbound route is a :class:`~common.link.ShapedSender`; a StartRequest
sets the emulated link of every route for its request before the core sees it. A malformed frame is
logged and dropped. An order or protocol violation (lost, duplicated or reordered message) fails the
request it concerns with a Fault to the scheduler and leaves the service ready for the next request:
it never crashes the service.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import structlog
import zmq

from common.link import LinkError, ShapedSender, close_all, configure_all
from common.observability import trace
from common.protocol import (
    EndRequest,
    Fault,
    Message,
    ProtocolError,
    Ready,
    Segment,
    Shutdown,
    StageStats,
    StartRequest,
    encode,
)
from common.transport import recv

log = structlog.get_logger()


class Core(Protocol):
    name: str

    def handle(self, msg: Message) -> list[tuple[str, Message]]: ...


@dataclass
class ServiceSockets:
    inputs: list[zmq.Socket]  # PULL sockets: ring input and/or commands
    routes: dict[str, ShapedSender]  # destination name ("next", "scheduler") -> shaped PUSH socket

    def send(self, dest: str, msg: Message) -> None:
        if isinstance(msg, StageStats):  # a traced request's timeline leaves with its stats
            msg = replace(msg, spans=trace.finish(msg.request_id))
        with trace.span("send"):
            self.routes[dest].send(encode(msg))


def serve(
    core: Core,
    sockets: ServiceSockets,
    *,
    poll_interval_s: float,
    drop_request: Callable[[str], None],
    after_send: Callable[[], None] | None = None,
) -> None:
    """Run until a Shutdown command arrives; then deliver what is queued and close the routes."""
    structlog.contextvars.bind_contextvars(service=core.name)
    try:
        _loop(core, sockets, poll_interval_s, drop_request, after_send)
    finally:
        close_all(sockets.routes.values())


def _loop(core: Core, sockets: ServiceSockets, poll_interval_s: float, drop_request: Callable[[str], None],
          after_send: Callable[[], None] | None) -> None:
    sockets.send("scheduler", Ready(core.name, os.getpid()))
    log.info("service_ready", pid=os.getpid())
    poller = zmq.Poller()
    for sock in sockets.inputs:
        poller.register(sock, zmq.POLLIN)
    while True:
        events = dict(poller.poll(int(poll_interval_s * 1000)))
        if not events:
            continue  # the timeout is the loop's chance to notice a Shutdown or a signal
        for sock in sockets.inputs:
            if sock not in events:
                continue
            received = trace.now_ns()
            try:
                msg = recv(sock)
            except ProtocolError as exc:
                log.warning("bad_message_dropped", error=str(exc))
                continue
            if isinstance(msg, Shutdown):
                log.info("service_shutdown")
                return
            request_id = getattr(msg, "request_id", "")
            if isinstance(msg, StartRequest) and msg.trace:
                trace.start(request_id)
            trace.record("recv", request_id, received, trace.now_ns())
            with trace.bound(request_id):
                _handle(core, msg, sockets, drop_request)
                if after_send is not None:
                    after_send()


def _handle(core: Core, msg: Message, sockets: ServiceSockets, drop_request: Callable[[str], None]) -> None:
    request_id = getattr(msg, "request_id", "")
    started = time.perf_counter()
    if isinstance(msg, StartRequest):
        try:
            configure_all(sockets.routes.values(), msg.link_mbps, msg.link_latency_ms)
        except LinkError as exc:  # the scheduler refuses these; a stray one fails its request, unshaped
            configure_all(sockets.routes.values(), 0.0, 0.0)
            sockets.send("scheduler", Fault(core.name, request_id, str(exc)))
    try:
        outs = core.handle(msg)
    except ProtocolError as exc:
        log.error("request_failed", request_id=request_id, kind=msg.KIND, error=str(exc))
        drop_request(request_id)
        trace.finish(request_id)
        sockets.send("scheduler", Fault(core.name, request_id, str(exc)))
        return
    for dest, out in outs:
        sockets.send(dest, out)
    if isinstance(msg, StartRequest):
        log.info(msg.KIND, request_id=request_id, mode=msg.mode, link_mbps=msg.link_mbps,
                 link_latency_ms=msg.link_latency_ms)
    elif isinstance(msg, EndRequest):
        log.info(msg.KIND, request_id=request_id)
    else:
        log.debug(
            "handled", request_id=request_id, kind=msg.KIND, epoch=getattr(msg, "epoch", None),
            seq=getattr(msg, "seq", None), rows=msg.rows if isinstance(msg, Segment) else None,
            sent=len(outs), ms=round((time.perf_counter() - started) * 1e3, 2),
        )
