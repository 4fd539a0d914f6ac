"""Link emulation inside flowring's own transport: no root, no tc/netem.

Every outbound PUSH socket of the ring is owned by a :class:`ShapedSender`. ``send`` stamps the
message with the time a serial link of ``mbps`` bandwidth and ``latency_ms`` one-way latency would
deliver it and returns at once; a background thread, the only user of the socket after construction,
holds each message until that time and then sends it for real, in FIFO order:

    departure  = max(send time, time the link is free)
    link free  = departure + bytes * 8 / bandwidth
    delivery   = link free + latency

``bytes`` is the sum of the frame lengths. Zero-copy frames stay referenced by the queue until sent,
so a sender must not write into a tensor it has handed over (the ring's cores never do).

``python -m common.wire.link --mbps 100 --latency-ms 2 --bytes 1000000`` measures the cost of one hop.
"""

from __future__ import annotations

import math
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated

import structlog
import typer
import zmq

from common.wire.curve import ClientCurve
from common.wire.transport import push

log = structlog.get_logger()

Frame = bytes | memoryview | zmq.Frame
SendObserver = Callable[[int, float], None]  # (bytes, seconds from send() until handed to the socket)


def _nbytes(frame: Frame) -> int:
    return frame.buffer.nbytes if isinstance(frame, zmq.Frame) else memoryview(frame).nbytes


class LinkError(ValueError):
    """Link settings that no link can have (negative, infinite or not a number)."""


class LinkClosedError(RuntimeError):
    """A message was sent through a ShapedSender after ``close``."""


@dataclass(frozen=True)
class LinkSettings:
    """One emulated hop; 0 bandwidth means unlimited, 0 and 0 means unshaped."""

    mbps: float = 0.0  # megabits (10^6 bits) per second
    latency_ms: float = 0.0  # one-way

    def __post_init__(self) -> None:
        for name, value in (("link_mbps", self.mbps), ("link_latency_ms", self.latency_ms)):
            if not math.isfinite(value) or value < 0:
                raise LinkError(f"{name} must be a finite number >= 0, not {value}")

    @property
    def shaped(self) -> bool:
        return self.mbps > 0 or self.latency_ms > 0

    def transmit_s(self, nbytes: int) -> float:
        """Seconds the link is busy putting ``nbytes`` on the wire."""
        return nbytes * 8 / (self.mbps * 1e6) if self.mbps > 0 else 0.0

    def cost_ms(self, nbytes: int) -> float:
        """Predicted send-to-arrival time of ``nbytes`` on an idle link."""
        return self.transmit_s(nbytes) * 1e3 + self.latency_ms


@dataclass(frozen=True)
class LinkState:
    """What the emulated link has scheduled so far (``time.perf_counter()`` seconds)."""

    free_at: float = 0.0  # when the link finishes its current transmission
    last_delivery: float = 0.0  # FIFO: no message is delivered before the one sent ahead of it

    def after(self, settings: LinkSettings, now: float, nbytes: int) -> LinkState:
        """The state once ``nbytes`` are sent at ``now``; its ``last_delivery`` is that message's arrival."""
        departure = max(now, self.free_at)
        free_at = departure + settings.transmit_s(nbytes)
        return LinkState(free_at, max(free_at + settings.latency_ms / 1e3, self.last_delivery))


@dataclass(frozen=True, slots=True)
class _Outgoing:
    deliver_at: float  # time.perf_counter() seconds
    frames: tuple[Frame, ...]
    queued_at: float
    nbytes: int


class ShapedSender:
    """A PUSH socket behind an emulated serial link; ``send`` never blocks the caller."""

    def __init__(self, sock: zmq.Socket, name: str = "", settings: LinkSettings | None = None,
                 observer: SendObserver | None = None) -> None:
        self.name = name
        self._sock = sock
        self._observer = observer
        self._settings = settings or LinkSettings()
        self._lock = threading.Lock()
        self._state = LinkState()
        self._queue: queue.SimpleQueue[_Outgoing | None] = queue.SimpleQueue()
        self._abort = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._deliver, name=f"link {name}", daemon=True)
        self._thread.start()

    @property
    def settings(self) -> LinkSettings:
        return self._settings

    def configure(self, mbps: float, latency_ms: float) -> None:
        """Shape the messages sent from now on (messages already queued keep their delivery time)."""
        settings = LinkSettings(mbps, latency_ms)
        with self._lock:
            self._settings = settings

    def send(self, frames: Sequence[Frame], settings: LinkSettings | None = None) -> None:
        """Queue one multipart message for delivery at its emulated arrival time; ``settings``: this
        message's own link (its request's), instead of the sender's."""
        now = time.perf_counter()
        nbytes = sum(_nbytes(f) for f in frames)
        with self._lock:
            if self._closed:
                raise LinkClosedError(f"link {self.name or '?'} is closed")
            self._state = self._state.after(settings or self._settings, now, nbytes)
            self._queue.put(_Outgoing(self._state.last_delivery, tuple(frames), now, nbytes))

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (waiting at most ``timeout_s``, then dropping the rest); close the socket."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("link_close_dropped_messages", link=self.name, timeout_s=timeout_s)
            self._abort.set()
            self._thread.join(1.0)

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            delay = item.deliver_at - time.perf_counter()
            if delay > 0 and self._abort.wait(delay):
                break
            try:
                self._sock.send_multipart(item.frames, copy=False)
            except zmq.ZMQError as exc:
                log.error("link_send_failed", link=self.name, error=str(exc))
                continue
            if self._observer is not None:
                self._observer(item.nbytes, time.perf_counter() - item.queued_at)
        self._sock.close(0 if self._abort.is_set() else None)


def shaped_push(ctx: zmq.Context, endpoint: str, name: str, observer: SendObserver | None = None,
                curve: ClientCurve | None = None) -> ShapedSender:
    """A PUSH socket connected to ``endpoint`` (CURVE with ``curve``), owned by a new (unshaped) ShapedSender."""
    return ShapedSender(push(ctx, endpoint, curve), name, observer=observer)


def configure_all(senders: Iterable[ShapedSender], mbps: float, latency_ms: float) -> None:
    for sender in senders:
        sender.configure(mbps, latency_ms)


def close_all(senders: Iterable[ShapedSender], timeout_s: float = 5.0) -> None:
    for sender in senders:
        sender.close(timeout_s)


# ------------------------------------------------------------------------------------------ measurement
@dataclass(frozen=True)
class HopMeasurement:
    nbytes: int
    predicted_ms: float
    measured_ms: float  # median send-to-arrival time over ``repeats`` sends on an idle link
    repeats: int


def measure_hop(settings: LinkSettings, nbytes: int, repeats: int = 5) -> HopMeasurement:
    """Send ``nbytes`` ``repeats`` times over TCP loopback through a ShapedSender; time each arrival."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    receiver = ctx.socket(zmq.PULL)
    receiver.setsockopt(zmq.LINGER, 0)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sender = shaped_push(ctx, f"tcp://127.0.0.1:{port}", "measure")
    payload = memoryview(bytearray(nbytes))
    try:
        sender.send([b"warm-up"])  # the TCP connection is set up on the first message
        receiver.recv_multipart()
        sender.configure(settings.mbps, settings.latency_ms)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            sender.send([payload])
            receiver.recv_multipart(copy=False)
            times.append((time.perf_counter() - started) * 1e3)
    finally:
        sender.close()
        receiver.close(0)
    return HopMeasurement(nbytes, settings.cost_ms(nbytes), statistics.median(times), repeats)


cli = typer.Typer(add_completion=False, help="Measure the cost of one emulated hop.")


@cli.command()
def measure(
    mbps: Annotated[float, typer.Option(min=0.0, help="Emulated bandwidth in megabits per second (0: unlimited).")],
    latency_ms: Annotated[float, typer.Option(min=0.0, help="Emulated one-way latency in milliseconds.")],
    nbytes: Annotated[int, typer.Option("--bytes", min=1, help="Largest message; smaller ones are 1/1000, 1/100, 1/10.")],
    repeats: Annotated[int, typer.Option(min=1, help="Sends per size; the median is shown.")] = 5,
) -> None:
    """Print the predicted and the measured cost of one emulated hop for a few message sizes."""
    settings = LinkSettings(mbps, latency_ms)
    sizes = sorted({max(1, nbytes // d) for d in (1000, 100, 10, 1)})
    typer.echo(f"link {mbps:g} Mbps, {latency_ms:g} ms one way; median of {repeats} sends over TCP loopback")
    typer.echo(f"{'bytes':>12} {'predicted ms':>13} {'measured ms':>12} {'error ms':>9}")
    for size in sizes:
        m = measure_hop(settings, size, repeats)
        typer.echo(f"{m.nbytes:>12} {m.predicted_ms:>13.2f} {m.measured_ms:>12.2f} "
                   f"{m.measured_ms - m.predicted_ms:>+9.2f}")


if __name__ == "__main__":
    cli()
