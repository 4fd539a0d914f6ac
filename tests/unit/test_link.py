"""An emulated hop costs what its settings say: real PUSH/PULL sockets over TCP loopback.

Shaped cases are predicted to cost >= 40 ms, so a few ms of scheduling noise on a loaded machine stay
inside the 10% bound; each case takes the median of several sends.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest
import zmq
from typer.testing import CliRunner

from common.link import LinkClosedError, LinkError, LinkSettings, ShapedSender, cli, measure_hop, shaped_push

KB = 1000


@pytest.fixture
def hop() -> Iterator[tuple[ShapedSender, zmq.Socket]]:
    """A connected (ShapedSender, PULL receiver) pair on loopback, connection already set up."""
    ctx = zmq.Context.instance()
    receiver = ctx.socket(zmq.PULL)
    receiver.setsockopt(zmq.LINGER, 0)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sender = shaped_push(ctx, f"tcp://127.0.0.1:{port}", "test")
    sender.send([b"hello"])
    assert receiver.poll(5000)
    receiver.recv_multipart()
    yield sender, receiver
    sender.close()
    receiver.close(0)


def _recv(receiver: zmq.Socket, timeout_s: float = 5.0) -> list[bytes]:
    assert receiver.poll(int(timeout_s * 1000)), "message never arrived"
    return receiver.recv_multipart()


def test_one_message_costs_latency_plus_transmission(hop):
    sender, receiver = hop
    sender.configure(20, 5)
    payload = memoryview(bytearray(100 * KB))  # 800 kbit at 20 Mbps = 40 ms, plus 5 ms latency
    times = []
    for _ in range(5):
        started = time.perf_counter()
        sender.send([b"header", payload])
        _recv(receiver)
        times.append((time.perf_counter() - started) * 1e3)
    predicted = LinkSettings(20, 5).cost_ms(100 * KB + len(b"header"))
    assert predicted == pytest.approx(45.0, abs=0.01)
    assert statistics.median(times) == pytest.approx(predicted, rel=0.10)


def test_latency_only_costs_the_latency(hop):
    sender, receiver = hop
    sender.configure(0, 40)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        sender.send([b"x" * 100])
        _recv(receiver)
        times.append((time.perf_counter() - started) * 1e3)
    assert statistics.median(times) == pytest.approx(40.0, rel=0.10)


def test_back_to_back_messages_queue_behind_each_other(hop):
    """Bandwidth serialises: message i arrives at latency + (i + 1) transmissions after the burst."""
    sender, receiver = hop
    sender.configure(20, 5)
    payload = memoryview(bytearray(100 * KB))
    gaps, lasts = [], []
    for _ in range(3):
        started = time.perf_counter()
        for i in range(3):
            sender.send([str(i).encode(), payload])
        arrivals = []
        for _ in range(3):
            _recv(receiver)
            arrivals.append((time.perf_counter() - started) * 1e3)
        lasts.append(arrivals[-1])
        gaps.extend(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
    transmit_ms = LinkSettings(20, 5).transmit_s(100 * KB + 1) * 1e3
    assert statistics.median(lasts) == pytest.approx(5 + 3 * transmit_ms, rel=0.10)  # 125 ms, not 45
    assert statistics.median(gaps) == pytest.approx(transmit_ms, rel=0.10)


def test_fifo_order_kept_across_sizes_and_reconfiguration(hop):
    sender, receiver = hop
    sender.configure(50, 20)
    sizes = [200 * KB, 10, 50 * KB, 1, 0, 120 * KB]
    for i, size in enumerate(sizes):
        sender.send([str(i).encode(), bytes(size)])
    sender.configure(0, 0)  # later messages must not overtake the ones still on the slow link
    for i in range(len(sizes), len(sizes) + 5):
        sender.send([str(i).encode(), b""])
    got = [int(_recv(receiver)[0]) for _ in range(len(sizes) + 5)]
    assert got == list(range(len(sizes) + 5))


def test_unshaped_adds_under_2_ms(hop):
    sender, receiver = hop
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(receiver.getsockopt_string(zmq.LAST_ENDPOINT))
    raw.send(b"connect")
    _recv(receiver)

    def once_ms(send) -> float:
        started = time.perf_counter()
        send([b"h", bytes(10 * KB)])
        _recv(receiver)
        return (time.perf_counter() - started) * 1e3

    direct, shaped = [], []
    try:
        for _ in range(21):  # interleaved, so a burst of load hits both alike
            direct.append(once_ms(lambda frames: raw.send_multipart(frames, copy=False)))
            shaped.append(once_ms(sender.send))
    finally:
        raw.close(0)
    assert statistics.median(shaped) - statistics.median(direct) < 2.0


def test_send_returns_at_once(hop):
    sender, receiver = hop
    sender.configure(1, 100)  # 100 KB would take 900 ms to arrive
    started = time.perf_counter()
    sender.send([bytes(100 * KB)])
    assert time.perf_counter() - started < 0.02
    sender.configure(0, 0)
    _recv(receiver)


def test_close_delivers_queued_then_refuses():
    ctx = zmq.Context.instance()
    receiver = ctx.socket(zmq.PULL)
    receiver.setsockopt(zmq.LINGER, 0)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sender = shaped_push(ctx, f"tcp://127.0.0.1:{port}", "closing")
    sender.configure(0, 30)
    sender.send([b"last words"])
    sender.close()
    try:
        assert _recv(receiver) == [b"last words"]
        with pytest.raises(LinkClosedError):
            sender.send([b"too late"])
        sender.close()  # a second close is harmless
    finally:
        receiver.close(0)


@pytest.mark.parametrize("mbps, latency_ms", [(-1, 0), (0, -0.5), (float("nan"), 0), (float("inf"), 1)])
def test_impossible_settings_rejected(mbps, latency_ms):
    with pytest.raises(LinkError, match="link_"):
        LinkSettings(mbps, latency_ms)


def test_measure_hop_and_command():
    m = measure_hop(LinkSettings(100, 40), 1000, repeats=3)
    assert m.predicted_ms == pytest.approx(40.08)
    assert m.measured_ms == pytest.approx(m.predicted_ms, rel=0.10)
    result = CliRunner().invoke(cli, ["--mbps", "0", "--latency-ms", "0", "--bytes", "1000", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "predicted ms" in result.output and len(result.output.splitlines()) == 6

