"""An emulated hop costs what its settings say.

The schedule (when each message leaves and arrives) is decided by pure code and tested exactly; over
real PUSH/PULL sockets the tests check order, content and that nothing arrives early, never how late
a loaded machine makes it (that is for ``python -m common.wire.link``, a benchmark).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq
from typer.testing import CliRunner

from common.wire.link import (
    LinkClosedError,
    LinkError,
    LinkSettings,
    LinkState,
    ShapedSender,
    cli,
    measure_hop,
    shaped_push,
)

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


# ----------------------------------------------------------------------- the schedule the link decides
def test_one_message_costs_latency_plus_transmission():
    settings = LinkSettings(20, 5)  # 800 kbit at 20 Mbps = 40 ms, plus 5 ms latency
    state = LinkState().after(settings, 10.0, 100 * KB)
    assert state.free_at == pytest.approx(10.040)
    assert state.last_delivery == pytest.approx(10.045)
    assert settings.cost_ms(100 * KB) == pytest.approx(45.0)


def test_back_to_back_messages_queue_behind_each_other():
    """Bandwidth serialises: message i arrives at latency + (i + 1) transmissions after the burst."""
    settings = LinkSettings(20, 5)
    state, arrivals = LinkState(), []
    for _ in range(3):
        state = state.after(settings, 10.0, 100 * KB)
        arrivals.append(state.last_delivery - 10.0)
    assert arrivals == pytest.approx([0.045, 0.085, 0.125])  # 125 ms for the last, not 45


def test_an_idle_link_sends_at_once():
    settings = LinkSettings(20, 5)
    state = LinkState().after(settings, 10.0, 100 * KB).after(settings, 11.0, 100 * KB)
    assert state.last_delivery == pytest.approx(11.045)


def test_a_faster_link_never_overtakes_a_slower_one():
    slow = LinkState().after(LinkSettings(1, 100), 10.0, 100 * KB)
    fast = slow.after(LinkSettings(0, 0), 10.001, 10)
    assert fast.last_delivery == slow.last_delivery


@pytest.mark.parametrize("nbytes", [0, 1, 100 * KB])
def test_unshaped_delivers_on_send(nbytes):
    state = LinkState().after(LinkSettings(), 10.0, nbytes)
    assert (state.free_at, state.last_delivery) == (10.0, 10.0)


# ------------------------------------------------------------------------- real sockets: order and delay
def test_messages_arrive_intact_in_order_and_never_early(hop):
    sender, receiver = hop
    sender.configure(20, 5)
    payload = bytes(range(256)) * 400
    started = time.perf_counter()
    for i in range(3):
        sender.send([str(i).encode(), memoryview(payload)])
    got = []
    for _ in range(3):
        got.append(_recv(receiver))
    elapsed_ms = (time.perf_counter() - started) * 1e3
    assert [int(g[0]) for g in got] == [0, 1, 2] and all(g[1] == payload for g in got)
    assert elapsed_ms >= LinkSettings(20, 5).cost_ms(len(payload)) + 2 * 8 * len(payload) / 20e3  # a lower bound


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


def test_send_returns_before_delivery(hop):
    sender, receiver = hop
    sender.configure(1, 100)  # 100 KB would take 900 ms to arrive
    sender.send([bytes(100 * KB)])
    assert not receiver.poll(0)  # held by the link, not sent in the caller's thread
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
    assert m.measured_ms >= m.predicted_ms and m.repeats == 3  # never early; how late depends on the machine
    result = CliRunner().invoke(cli, ["--mbps", "0", "--latency-ms", "0", "--bytes", "1000", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "predicted ms" in result.output and len(result.output.splitlines()) == 6

