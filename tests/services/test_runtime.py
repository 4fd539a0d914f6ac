"""The service loop over real sockets: faults stay in their request, bad input is refused and counted,
heartbeats flow."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import msgpack
import pytest
import structlog
import torch
import zmq

from common.cluster.settings import Timeouts
from common.observability.metrics import ServiceMetrics
from common.wire.codec import PROTOCOL_VERSION, Message, decode, encode
from common.wire.commands import EndRequest, Shutdown, StartRequest
from common.wire.link import shaped_push
from common.wire.reports import Fault, Heartbeat, Ready, StageStats, Verdict
from common.wire.ring import Segment
from services.batch import Batched, Forward
from services.runtime import CoreHooks, ServiceSockets, serve

TIMEOUTS = Timeouts(poll_interval_s=0.05, heartbeat_interval_s=0.05)
LIMIT = 4096  # max_message_bytes of the service under test


@dataclass
class FlakyCore:
    """Raises on the request named "boom"; blocks in the one named "slow" until released; otherwise reports
    StageStats at EndRequest."""

    name: str = "stage-1"
    dropped: list[str] = field(default_factory=list)
    segments: int = 0
    blocked: threading.Event = field(default_factory=threading.Event)  # set while handling "slow"
    release: threading.Event = field(default_factory=threading.Event)

    def handle(self, msg: Message) -> list[tuple[str, Message]]:
        if getattr(msg, "request_id", "") == "boom":
            raise RuntimeError("kaboom")
        if getattr(msg, "request_id", "") == "slow":  # a long forward
            self.blocked.set()
            self.release.wait(30.0)
            self.blocked.clear()
        if isinstance(msg, Segment):
            self.segments += 1
        if isinstance(msg, EndRequest):
            return [("scheduler", StageStats(self.name, msg.request_id, 0.0, 0, 0))]
        return []


@dataclass
class Harness:
    core: FlakyCore
    metrics: ServiceMetrics
    commands: zmq.Socket  # PUSH to the service's command socket
    data: zmq.Socket  # PUSH to its data socket
    scheduler: zmq.Socket  # PULL: what the service reports

    def command(self, msg: Message) -> None:
        self.commands.send_multipart(encode(msg))

    def report(self, kind: type, timeout_s: float = 10.0) -> Message:
        """The next report of ``kind`` (others, heartbeats included, are skipped)."""
        while self.scheduler.poll(int(timeout_s * 1000)):
            msg = decode(self.scheduler.recv_multipart())
            if isinstance(msg, kind):
                return msg
        raise AssertionError(f"no {kind.__name__} arrived")

    def rejected(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value("flowring_messages_rejected_total", {"reason": reason}) or 0.0


def _bound_pull(ctx: zmq.Context) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, LIMIT)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def _push(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


@pytest.fixture
def service() -> Iterator[Harness]:
    ctx = zmq.Context.instance()
    scheduler = ctx.socket(zmq.PULL)
    scheduler.setsockopt(zmq.LINGER, 0)
    port = scheduler.bind_to_random_port("tcp://127.0.0.1")
    cmd_sock, cmd_endpoint = _bound_pull(ctx)
    data_sock, data_endpoint = _bound_pull(ctx)
    core, metrics = FlakyCore(), ServiceMetrics()
    routes = {"scheduler": shaped_push(ctx, f"tcp://127.0.0.1:{port}", "test->scheduler")}
    hooks = CoreHooks(drop_request=lambda request_id: core.dropped.append(request_id))
    thread = threading.Thread(target=serve, args=(core, ServiceSockets(cmd_sock, data_sock, routes), hooks),
                              kwargs={"timeouts": TIMEOUTS, "metrics": metrics, "max_message_bytes": LIMIT})
    thread.start()
    harness = Harness(core, metrics, _push(ctx, cmd_endpoint), _push(ctx, data_endpoint), scheduler)
    try:
        assert harness.report(Ready).service == "stage-1"
        yield harness
    finally:
        harness.command(Shutdown(cmd_seq=-1))
        thread.join(10)
        for sock in (harness.commands, harness.data, scheduler, cmd_sock, data_sock):
            sock.close(0)
    assert not thread.is_alive(), "the service did not stop on Shutdown"


def _start(request_id: str, cmd_seq: int) -> StartRequest:
    return StartRequest(request_id=request_id, cmd_seq=cmd_seq, prompt=(1, 2), max_new_tokens=4)


def test_an_exception_fails_its_request_once_and_the_service_serves_the_next(service):
    with structlog.testing.capture_logs() as logs:
        service.command(_start("boom", 0))
        fault = service.report(Fault)
        service.command(_start("fine", 1))
        service.command(EndRequest("fine", 2, "done"))
        stats = service.report(StageStats)
    assert (fault.service, fault.request_id) == ("stage-1", "boom")
    assert "RuntimeError: kaboom" in fault.error
    assert stats.request_id == "fine"
    assert service.core.dropped == ["boom"]
    failures = [e for e in logs if e["event"] == "request_failed"]
    assert len(failures) == 1 and failures[0]["exc_info"] is True and failures[0]["request_id"] == "boom"


def test_heartbeats_carry_vitals_and_counters(service):
    service.command(_start("a", 0))
    service.report(Heartbeat)  # may predate the start
    beat = service.report(Heartbeat)
    assert beat.service == "stage-1" and beat.pid > 0 and beat.in_flight == 1 and beat.uptime_s > 0
    assert beat.counters["messages_handled"] >= 1
    service.command(EndRequest("a", 1, "done"))
    service.report(StageStats)
    service.report(Heartbeat)
    assert service.report(Heartbeat).in_flight == 0


def test_command_sequence_gaps_and_repeats_are_rejected(service):
    service.command(_start("a", 0))
    service.command(_start("a", 0))  # repeated: dropped, nothing else happens
    service.command(EndRequest("a", 5, "done"))  # commands 1..4 lost: reported, and this one still applies
    fault = service.report(Fault)
    assert fault.request_id == "" and fault.lost == (1, 4) and "#1..#4 lost" in fault.error
    assert service.report(StageStats).request_id == "a", "the command that revealed the gap was applied"
    service.command(_start("b", 6))  # the stream resumes after the gap
    service.command(EndRequest("b", 7, "done"))
    assert service.report(StageStats).request_id == "b"
    assert service.rejected("sequence") == 2


def test_bad_frames_and_foreign_kinds_are_counted_and_survived(service):
    service.command(Verdict("a", 0, 0, 0, "tree"))  # a report is no command
    service.commands.send_multipart([msgpack.packb({"v": 99, "kind": "start", "f": {}, "t": []})])
    service.commands.send_multipart([b"\xc1 not msgpack"])
    service.commands.send_multipart([msgpack.packb({"v": PROTOCOL_VERSION, "kind": "launch", "f": {}, "t": []})])
    service.data.send_multipart(encode(_start("x", 0)))  # a command on the data socket
    # two frames, each under the socket's per-frame limit, together over the message limit
    service.data.send_multipart(encode(Segment("a", 0, 0, 0, "tree", 0, (1,) * 600, (-1,) * 600, (0,) * 600,
                                               hidden=torch.zeros(600, 1))))
    service.command(_start("c", 0))
    service.command(EndRequest("c", 1, "done"))
    assert service.report(StageStats).request_id == "c"
    assert service.rejected("unknown_command") == 2
    assert service.rejected("version") == 1
    assert service.rejected("malformed") == 1
    assert service.rejected("unknown_kind") == 1
    assert service.rejected("oversized") == 1
    assert service.core.segments == 0


def test_a_frame_over_maxmsgsize_never_reaches_the_service(service):
    service.data.send_multipart(encode(Segment("a", 0, 0, 0, "tree", 0, (1,) * 2, (-1,) * 2, (0,) * 2,
                                               hidden=torch.zeros(2, LIMIT))))
    service.command(_start("d", 0))
    service.command(EndRequest("d", 1, "done"))
    assert service.report(StageStats).request_id == "d"
    assert service.core.segments == 0


def test_a_service_busy_in_a_long_handle_keeps_beating(service):
    while service.scheduler.poll(0):  # drop what came before
        service.scheduler.recv_multipart()
    service.command(_start("slow", 0))
    assert service.core.blocked.wait(10.0)
    while service.scheduler.poll(0):  # beats sent before the handle began
        service.scheduler.recv_multipart()
    try:
        beats = [service.report(Heartbeat) for _ in range(3)]
        assert service.core.blocked.is_set()  # every beat came while the handle still blocked the loop
        assert all(b.service == "stage-1" for b in beats)
    finally:
        service.core.release.set()

@dataclass
class DraftingCore:
    """Has ``steps`` steps of work of its own after a StartRequest, one report each."""

    name: str = "drafter"
    steps: int = 0

    def handle(self, msg: Message) -> list[tuple[str, Message]]:
        if isinstance(msg, StartRequest):
            self.steps = 5
        return []

    def next_work(self) -> str | None:
        return "r1" if self.steps else None

    def work(self, request_id: str) -> list[tuple[str, Message]]:
        self.steps -= 1
        return [("scheduler", StageStats(self.name, request_id, 0.0, self.steps, 0))]


@contextlib.contextmanager
def _working_service(core: DraftingCore | RecordingCore | BatchingCore, timeouts: Timeouts,
                     hooks: CoreHooks | None = None,
                     metrics: ServiceMetrics | None = None) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """``core`` served with its work hooks (or ``hooks``) in a thread: yields (its command socket's sender, the
    scheduler's receiver), and shuts it down after."""
    ctx = zmq.Context.instance()
    scheduler = ctx.socket(zmq.PULL)
    scheduler.setsockopt(zmq.LINGER, 0)
    port = scheduler.bind_to_random_port("tcp://127.0.0.1")
    cmd_sock, cmd_endpoint = _bound_pull(ctx)
    routes = {"scheduler": shaped_push(ctx, f"tcp://127.0.0.1:{port}", "test->scheduler")}
    hooks = hooks or CoreHooks(drop_request=lambda request_id: None, next_work=core.next_work, work=core.work)
    thread = threading.Thread(target=serve, args=(core, ServiceSockets(cmd_sock, None, routes), hooks),
                              kwargs={"timeouts": timeouts, "metrics": metrics})
    thread.start()
    commands = _push(ctx, cmd_endpoint)
    try:
        yield commands, scheduler
    finally:
        commands.send_multipart(encode(Shutdown(cmd_seq=-1)))
        thread.join(40)
        for sock in (commands, scheduler, cmd_sock):
            sock.close(0)
    assert not thread.is_alive()


def test_a_core_with_work_of_its_own_is_not_held_in_a_receive():
    """With a 30 s poll interval, the five steps still follow one another with no message to wake the loop."""
    slow = Timeouts(poll_interval_s=30.0, heartbeat_interval_s=30.0)
    with _working_service(DraftingCore(), slow) as (commands, scheduler):
        commands.send_multipart(encode(_start("r1", 0)))
        left = []
        while len(left) < 5 and scheduler.poll(10_000):
            msg = decode(scheduler.recv_multipart())
            if isinstance(msg, StageStats):
                left.append(msg.forwards)
    assert left == [4, 3, 2, 1, 0]


@dataclass
class RecordingCore:
    """Works three steps after a StartRequest; the first one waits for ``release``. Records what it did."""

    name: str = "drafter"
    steps: int = 0
    done: list[str] = field(default_factory=list)
    working: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def handle(self, msg: Message) -> list[tuple[str, Message]]:
        self.done.append(f"handle {msg.request_id}")
        self.steps = self.steps or 3
        return []

    def next_work(self) -> str | None:
        return "r0" if self.steps else None

    def work(self, request_id: str) -> list[tuple[str, Message]]:
        self.working.set()
        self.release.wait(10.0)
        self.steps -= 1
        self.done.append("work")
        return []


def test_every_message_that_arrived_is_handled_before_the_next_unit_of_work():
    """A drafter hears every credit and prune that came while it drafted before it drafts again."""
    core = RecordingCore()
    with _working_service(core, TIMEOUTS) as (commands, _):
        try:
            commands.send_multipart(encode(_start("r0", 0)))
            assert core.working.wait(10.0)
            for seq in (1, 2, 3):  # arrive while the first unit of work runs
                commands.send_multipart(encode(_start(f"r{seq}", seq)))
            time.sleep(0.5)  # loopback delivery into the service's queue
            core.release.set()
            deadline = time.monotonic() + 10.0
            while core.done.count("work") < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            core.release.set()
    assert core.done[:6] == ["handle r0", "work", "handle r1", "handle r2", "handle r3", "work"]


def test_each_request_keeps_its_own_emulated_link(service):
    """A later StartRequest with another link does not reshape the requests already running."""
    service.command(_start("fast", 0))
    service.command(replace(_start("far", 1), link_latency_ms=1000.0))
    sent = time.perf_counter()
    service.command(EndRequest("fast", 2, "done"))
    assert service.report(StageStats).request_id == "fast"
    fast_s = time.perf_counter() - sent
    sent = time.perf_counter()
    service.command(EndRequest("far", 3, "done"))
    assert service.report(StageStats).request_id == "far"
    slow_s = time.perf_counter() - sent
    assert fast_s < 0.5 and slow_s >= 1.0, (fast_s, slow_s)


@dataclass
class BatchingCore:
    """Holds each started request for a shared forward; the first forward waits for ``release``. The request
    named "bad" fails in it; every other one gets a StageStats."""

    name: str = "stage-1"
    held: list[str] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    forwarding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def handle(self, msg: Message) -> list[tuple[str, Message]]:
        self.held.append(msg.request_id)
        return []

    def batch_ready(self) -> bool:
        return bool(self.held)

    def run_batch(self) -> Batched:
        self.forwarding.set()
        self.release.wait(10.0)
        batch, self.held = self.held, []
        self.batches.append(batch)
        out = Batched(forwards=[Forward(len(batch), 3 * len(batch))])
        out.fail([r for r in batch if r == "bad"], RuntimeError("bad rows"))
        out.sends += [("scheduler", StageStats(self.name, r, 0.0, len(self.batches), 3)) for r in batch if r != "bad"]
        return out


def test_segments_that_arrive_during_a_forward_share_the_next_one_and_a_failure_stays_in_its_request():
    core, metrics = BatchingCore(), ServiceMetrics()
    hooks = CoreHooks(drop_request=core.dropped.append, batch_ready=core.batch_ready, run_batch=core.run_batch)
    with _working_service(core, TIMEOUTS, hooks, metrics) as (commands, scheduler):
        try:
            commands.send_multipart(encode(_start("r0", 0)))
            assert core.forwarding.wait(10.0)
            for seq, request_id in ((1, "r1"), (2, "bad"), (3, "r3")):  # arrive while the first forward runs
                commands.send_multipart(encode(_start(request_id, seq)))
            time.sleep(0.5)  # loopback delivery into the service's queue
            core.release.set()
            reports = []
            while len(reports) < 4 and scheduler.poll(10_000):
                msg = decode(scheduler.recv_multipart())
                if isinstance(msg, (StageStats, Fault)):
                    reports.append(msg)
        finally:
            core.release.set()
    assert core.batches == [["r0"], ["r1", "bad", "r3"]]
    assert [(type(m).__name__, m.request_id) for m in reports] == [
        ("StageStats", "r0"), ("Fault", "bad"), ("StageStats", "r1"), ("StageStats", "r3")]
    assert "bad rows" in reports[1].error and core.dropped == ["bad"]
    assert metrics.registry.get_sample_value("flowring_forward_requests_sum") == 4
    assert metrics.registry.get_sample_value("flowring_forward_rows_sum") == 12
    assert metrics.registry.get_sample_value("flowring_forward_requests_count") == 2
