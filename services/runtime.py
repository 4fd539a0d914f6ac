"""The I/O shell every ring service runs: poll with a timeout, decode, check, hand to the core, send.

Cores are state machines (``handle(message) -> [(destination, message)]``); this loop owns the
sockets, the logging, the metrics and the heartbeat. Every outbound route is a
:class:`~common.wire.link.ShapedSender`; a StartRequest sets the emulated link of every route for its
request before the core sees it.

What the loop refuses, each logged once, counted by reason and never fatal: an undecodable, oversized
or wrong-version frame; a message of a kind this socket does not take (``unknown_command``); a
command whose ``cmd_seq`` is not the next one (``sequence``; a gap also fails the request it
concerns). Any exception while a core handles a message fails that message's request with a Fault to
the scheduler and leaves the service serving the next one. A core with a shared forward waiting (a stage
or the verifier holding segments, :mod:`services.batch`) runs it once every arrived message is handled,
so the segments of every request that arrived meanwhile share one forward; a core with work of its own
between messages (the drafter drafting ahead) gets one step of it after every poll. The poll then does
not wait.
Every ``heartbeat_interval_s`` a thread
beside the loop sends a Heartbeat, so a service busy in a long forward is still heard and only a dead or
stopped process goes silent; no receive waits longer than that interval.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog
import zmq

from common.cluster.settings import Timeouts
from common.observability import trace
from common.observability.metrics import ServiceMetrics
from common.wire.codec import Message, encode
from common.wire.commands import EndRequest, Expand, Prune, Shutdown, StartRequest
from common.wire.errors import ProtocolError
from common.wire.link import LinkError, LinkSettings, ShapedSender, close_all
from common.wire.ordering import CommandOrder, OrderError
from common.wire.reports import Fault, Heartbeat, Ready, StageStats
from common.wire.ring import Features, Segment
from common.wire.transport import recv
from services.batch import Batched

log = structlog.get_logger()

COMMANDS = (StartRequest, Prune, Expand, EndRequest)  # what the scheduler sends a ring service, in cmd_seq order
DATA = (Segment,)
UNORDERED = (Features,)  # the verifier's base features for a draft head: on the command socket, no cmd_seq
DRAIN_LIMIT = 64  # messages handled at most before the next unit of a core's own work


class Core(Protocol):
    name: str

    def handle(self, msg: Message) -> list[tuple[str, Message]]: ...


@dataclass
class ServiceSockets:
    commands: zmq.Socket  # PULL: scheduler commands
    data: zmq.Socket | None  # PULL: ring input (stages, verifier); the drafter has none
    routes: dict[str, ShapedSender]  # destination name ("next", "scheduler", "drafter") -> shaped PUSH socket
    links: dict[str, LinkSettings] = field(default_factory=dict)  # request id -> its emulated link (StartRequest)

    def send(self, dest: str, msg: Message) -> None:
        if isinstance(msg, StageStats):  # a traced request's timeline leaves with its stats
            msg = replace(msg, spans=trace.finish(msg.request_id))
        with trace.span("send"):
            self.routes[dest].send(encode(msg), self.links.get(getattr(msg, "request_id", "")))


@dataclass(frozen=True)
class CoreHooks:
    """What the loop may ask of a core besides ``handle``."""

    drop_request: Callable[[str], None]  # forget a request after a fault
    next_work: Callable[[], str | None] = lambda: None  # a request with work between messages, or None
    work: Callable[[str], list[tuple[str, Message]]] = lambda request_id: []  # one step of it: what to send
    kv_cache_bytes: Callable[[], int] = lambda: 0
    batch_ready: Callable[[], bool] = lambda: False  # a shared forward waits (a stage's or the verifier's)
    run_batch: Callable[[], Batched] = Batched  # run it: what to send, which requests failed, forwards run


@dataclass
class _Vitals:
    started: float = field(default_factory=time.monotonic)
    in_flight: set[str] = field(default_factory=set)
    last_step_ms: float = 0.0


def serve(
    core: Core,
    sockets: ServiceSockets,
    hooks: CoreHooks,
    *,
    timeouts: Timeouts,
    metrics: ServiceMetrics | None = None,
    max_message_bytes: int = 0,
) -> None:
    """Run until a Shutdown command arrives; then deliver what is queued and close the routes."""
    loop = _ServiceLoop(core, sockets, hooks, timeouts, metrics or ServiceMetrics(), max_message_bytes)
    try:
        loop.run()
    finally:
        close_all(sockets.routes.values())


class _ServiceLoop:
    def __init__(self, core: Core, sockets: ServiceSockets, hooks: CoreHooks, timeouts: Timeouts,
                 metrics: ServiceMetrics, max_message_bytes: int) -> None:
        self.core, self.sockets, self.hooks, self.metrics = core, sockets, hooks, metrics
        self.heartbeat_s = timeouts.heartbeat_interval_s
        self.poll_ms = int(min(timeouts.poll_interval_s, timeouts.heartbeat_interval_s) * 1000)
        self.max_bytes = max_message_bytes
        self.vitals = _Vitals()
        self.order = CommandOrder()
        self.host = socket.gethostname()

    def run(self) -> None:
        self.sockets.send("scheduler", Ready(self.core.name, os.getpid()))
        log.info("service_ready", pid=os.getpid())
        poller = zmq.Poller()
        accepts: dict[zmq.Socket, tuple[type, ...]] = {self.sockets.commands: (*COMMANDS, Shutdown, *UNORDERED)}
        if self.sockets.data is not None:
            accepts[self.sockets.data] = DATA
        for sock in accepts:
            poller.register(sock, zmq.POLLIN)
        beating = threading.Event()
        heart = threading.Thread(target=self._heartbeats, args=(beating,), name="heartbeat", daemon=True)
        heart.start()
        try:
            self._serve(poller, accepts)
        finally:
            beating.set()
            heart.join(self.heartbeat_s + 1.0)

    def _heartbeats(self, stop: threading.Event) -> None:
        """Beat from a thread of its own, so a service busy in a long forward is still heard (a stopped or
        dead process is not); torch releases the GIL while it computes."""
        while not stop.is_set():
            try:
                self._beat()
            except Exception as exc:  # a beat that failed must not end the beating: the next one may go through
                log.warning("heartbeat_failed", error=repr(exc))
            stop.wait(self.heartbeat_s)

    def _serve(self, poller: zmq.Poller, accepts: dict[zmq.Socket, tuple[type, ...]]) -> None:
        while True:
            busy = self.hooks.batch_ready() or self.hooks.next_work() is not None
            events = dict(poller.poll(0 if busy else self.poll_ms))
            handled = 0
            # Every message that has arrived before the next unit of the core's own work: a drafter hears of
            # a credit or a prune now, not a draft level later. Bounded, so work is never starved.
            while events and handled < DRAIN_LIMIT:
                for sock, kinds in accepts.items():
                    if sock not in events:
                        continue
                    handled += 1
                    msg = self._receive(sock, kinds)
                    if isinstance(msg, Shutdown):
                        log.info("service_shutdown")
                        return
                    if msg is not None:
                        with trace.bound(getattr(msg, "request_id", "")):
                            self._handle(msg)
                events = dict(poller.poll(0))
            if self.hooks.batch_ready():
                self._batch()
            request_id = self.hooks.next_work()
            if request_id is not None:
                with trace.bound(request_id):
                    self._work(request_id)

    def _work(self, request_id: str) -> None:
        """One step of the core's own work for ``request_id``; a failure fails that request only."""
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            started = time.perf_counter()
            try:
                for dest, out in self.hooks.work(request_id):
                    self.sockets.send(dest, out)
            except Exception as exc:  # whatever went wrong concerns this request only: fail it, keep serving
                self._fail_request(request_id, "work", exc)
                return
            self.metrics.busy_seconds.inc(time.perf_counter() - started)

    def _batch(self) -> None:
        """The core's shared forward: send what it made, fail the requests it names, count rows and requests."""
        started = time.perf_counter()
        try:
            outcome = self.hooks.run_batch()
        except Exception as exc:  # cores name their failed requests; this is a core bug: fail all it holds
            for request_id in list(self.vitals.in_flight):
                self._fail_request(request_id, "batch", exc)
            return
        for request_id, exc in outcome.failed:
            self._fail_request(request_id, "batch", exc)
        for dest, out in outcome.sends:
            with trace.bound(getattr(out, "request_id", "")):
                self.sockets.send(dest, out)
        elapsed_s = time.perf_counter() - started
        self.metrics.busy_seconds.inc(elapsed_s)
        for forward in outcome.forwards:
            self.metrics.forward_rows.observe(forward.rows)
            self.metrics.forward_requests.observe(forward.requests)
        if outcome.forwards:
            self.vitals.last_step_ms = elapsed_s * 1e3
            log.debug("batch", forwards=[(f.requests, f.rows) for f in outcome.forwards], sent=len(outcome.sends),
                      ms=round(elapsed_s * 1e3, 2))

    def _receive(self, sock: zmq.Socket, kinds: tuple[type, ...]) -> Message | None:
        """The next message if it may be handled; None when it was rejected."""
        received = trace.now_ns()
        try:
            msg = recv(sock, self.max_bytes)
        except ProtocolError as exc:
            self._reject(exc.reason, str(exc))
            return None
        if isinstance(msg, StartRequest) and msg.trace:
            trace.start(msg.request_id)
        trace.record("recv", getattr(msg, "request_id", ""), received, trace.now_ns())
        if not isinstance(msg, kinds):
            self._reject("unknown_command", f"{msg.KIND} messages are not accepted here", kind=msg.KIND)
            return None
        if isinstance(msg, COMMANDS):
            last = self.order.last
            problem = self.order.check(msg.cmd_seq)
            if problem == "repeated":
                error = f"command #{msg.cmd_seq} after #{last}: repeated command"
                self._reject("sequence", error, kind=msg.KIND, request_id=msg.request_id)
                return None
            if problem == "lost":  # the scheduler fails the lost commands' requests; this command goes on
                first, end = self.order.gap
                error = f"{self.core.name}: commands #{first}..#{end} lost (#{msg.cmd_seq} followed #{last})"
                self._reject("sequence", error, kind=msg.KIND, request_id=msg.request_id)
                self.sockets.send("scheduler", Fault(self.core.name, "", error, lost=(first, end)))
        return msg

    def _reject(self, reason: str, error: str, **context: object) -> None:
        self.metrics.rejected.labels(reason).inc()
        log.warning("message_rejected", reason=reason, error=error, **context)

    def _handle(self, msg: Message) -> None:
        request_id = getattr(msg, "request_id", "")
        context = {"request_id": request_id, "round": getattr(msg, "round", None), "step": getattr(msg, "epoch", None)}
        with structlog.contextvars.bound_contextvars(**{k: v for k, v in context.items() if v not in (None, "")}):
            started = time.perf_counter()
            if isinstance(msg, StartRequest):
                self.vitals.in_flight.add(request_id)
                self._shape_links(msg)
            try:
                outs = self.core.handle(msg)
                for dest, out in outs:
                    self.sockets.send(dest, out)
            except Exception as exc:  # whatever went wrong concerns this request only: fail it, keep serving
                self._fail(msg, exc)
                return
            elapsed_s = time.perf_counter() - started
            self.metrics.busy_seconds.inc(elapsed_s)
            self.metrics.handled.labels(msg.KIND).inc()
            if isinstance(msg, EndRequest):
                self.vitals.in_flight.discard(request_id)
                self.sockets.links.pop(request_id, None)
            _log_handled(msg, len(outs), elapsed_s)

    def _shape_links(self, msg: StartRequest) -> None:
        """This request's messages leave through its own emulated link; other requests keep theirs."""
        try:
            self.sockets.links[msg.request_id] = LinkSettings(msg.link_mbps, msg.link_latency_ms)
        except LinkError as exc:  # the scheduler refuses these; a stray one fails its request, unshaped
            self.sockets.send("scheduler", Fault(self.core.name, msg.request_id, str(exc)))

    def _fail(self, msg: Message, exc: Exception, count: bool = True) -> None:
        """Fail ``msg``'s request; ``count``: also count a protocol violation as a rejection."""
        self._fail_request(getattr(msg, "request_id", ""), msg.KIND, exc, count)

    def _fail_request(self, request_id: str, kind: str, exc: Exception, count: bool = True) -> None:
        if isinstance(exc, ProtocolError):  # an order or protocol violation: expected, no traceback
            if count:
                self.metrics.rejected.labels("order" if isinstance(exc, OrderError) else exc.reason).inc()
            log.error("request_failed", request_id=request_id, kind=kind, error=str(exc))
        else:
            log.exception("request_failed", request_id=request_id, kind=kind, error=repr(exc))
        self.metrics.faults.inc()
        self.hooks.drop_request(request_id)
        trace.finish(request_id)
        self.vitals.in_flight.discard(request_id)
        self.sockets.send("scheduler", Fault(self.core.name, request_id, f"{type(exc).__name__}: {exc}"))

    def _beat(self) -> None:
        kv_bytes = self.hooks.kv_cache_bytes()
        self.metrics.in_flight.set(len(self.vitals.in_flight))
        self.metrics.kv_cache_bytes.set(kv_bytes)
        self.sockets.send("scheduler", Heartbeat(
            service=self.core.name, pid=os.getpid(), host=self.host,
            uptime_s=round(time.monotonic() - self.vitals.started, 3), in_flight=len(self.vitals.in_flight),
            kv_cache_bytes=kv_bytes, last_step_ms=round(self.vitals.last_step_ms, 3),
            counters=self.metrics.totals(),
        ))


def _log_handled(msg: Message, sent: int, elapsed_s: float) -> None:
    if isinstance(msg, StartRequest):
        log.info(msg.KIND, mode=msg.mode, link_mbps=msg.link_mbps, link_latency_ms=msg.link_latency_ms)
    elif isinstance(msg, EndRequest):
        log.info(msg.KIND, reason=msg.reason)
    else:
        log.debug("handled", kind=msg.KIND, seq=getattr(msg, "seq", None),
                  rows=msg.rows if isinstance(msg, Segment) else None, sent=sent, ms=round(elapsed_s * 1e3, 2))
