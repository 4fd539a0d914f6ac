"""CURVE sockets and the ZAP gatekeeper: authorized peers get through encrypted, strangers are refused and logged."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import structlog
import zmq
import zmq.asyncio

from common.cluster.keys import admitted_keys
from common.cluster.settings import ClusterSpec, Curve, Placement
from common.wire.client import GenerateReply, GenerateRequest
from common.wire.codec import decode, encode
from common.wire.commands import Shutdown
from common.wire.curve import (
    CLIENT,
    RING,
    ClientCurve,
    Gatekeeper,
    HandshakeRefusals,
    KeyPair,
    RefusalLog,
    as_client,
    as_server,
)
from common.wire.transport import pull, push, recv, send
from services.api.ring import exchange
from services.client import Client, ClusterUnavailable

RECEIVE_TIMEOUT_MS = 10_000  # generous: the machine may be loaded; a passing test returns at once


def _pair() -> KeyPair:
    return KeyPair(*zmq.curve_keypair())


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _server(ctx: zmq.Context, own: KeyPair, admitted: set[bytes], refused: threading.Event):
    gate = Gatekeeper(ctx, {RING: frozenset(admitted)}, on_refused=refused.set)
    gate.start()
    sock = pull(ctx, "tcp://127.0.0.1:*", own=own)
    return gate, sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def test_an_authorized_client_gets_through_and_a_stranger_is_refused_and_logged_once(ctx):
    server, friend, stranger = _pair(), _pair(), _pair()
    refused = threading.Event()
    with structlog.testing.capture_logs() as logs:
        gate, sock, endpoint = _server(ctx, server, {friend.public}, refused)
        try:
            intruder = push(ctx, endpoint, ClientCurve(stranger, server.public.decode()))
            send(intruder, Shutdown(cmd_seq=7))
            assert refused.wait(RECEIVE_TIMEOUT_MS / 1000), "the gatekeeper was never asked about the stranger"
            assert not sock.poll(200), "a message from an unauthorized key got through"

            ally = push(ctx, endpoint, ClientCurve(friend, server.public.decode()))
            send(ally, Shutdown(cmd_seq=8))
            assert sock.poll(RECEIVE_TIMEOUT_MS), "the authorized client's message did not arrive"
            assert recv(sock) == Shutdown(cmd_seq=8)
            intruder.close(0)
            ally.close(0)
        finally:
            sock.close(0)
            gate.stop()
    refusals = [e for e in logs if e["event"] == "peer_refused"]
    assert len(refusals) == 1, refusals  # the stranger retries its handshake; it is logged once
    assert refusals[0]["address"] == "127.0.0.1" and refusals[0]["public_key"] == stranger.public.decode()
    text = repr(logs)
    assert all(key.secret.decode() not in text for key in (server, friend, stranger))


def test_a_plain_socket_cannot_reach_a_curve_server_and_is_logged_once_and_counted(ctx):
    server = _pair()
    refused = threading.Event()
    with structlog.testing.capture_logs() as logs:
        gate, sock, endpoint = _server(ctx, server, set(), refused)
        try:
            plain = push(ctx, endpoint)
            send(plain, Shutdown(cmd_seq=1))
            assert refused.wait(RECEIVE_TIMEOUT_MS / 1000), "the refused plain peer was never counted"
            assert not sock.poll(500), "a message without CURVE got through"
            plain.close(0)
        finally:
            sock.close(0)
            gate.stop()
    refusals = [e for e in logs if e["event"] == "peer_refused"]
    assert len(refusals) == 1, refusals  # the plain socket reconnects and fails again: logged once
    # The address is read from the connection's descriptor, which a fast refusal may have closed already.
    assert refusals[0]["address"] in ("127.0.0.1", "") and refusals[0]["public_key"] == ""
    # This side sees a mechanism mismatch, or the plain peer noticed first and cut the handshake short.
    assert ("no CURVE" in refusals[0]["reason"] or "cut short" in refusals[0]["reason"]) and refusals[0]["domain"] == RING


def _watched(events: list[tuple[int, int]], addresses: dict[int, str]) -> tuple[list[dict], int]:
    count = []
    with structlog.testing.capture_logs() as logs:
        refusals = HandshakeRefusals(RefusalLog(lambda: count.append(1)), RING, addresses.get)
        for event, value in events:
            refusals.event(event, value)
    return [e for e in logs if e["event"] == "peer_refused"], len(count)


def test_a_handshake_failure_is_blamed_on_the_connection_that_disconnects_next():
    mismatch = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    logs, count = _watched([
        (zmq.EVENT_ACCEPTED, 11), (zmq.EVENT_ACCEPTED, 12),
        (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, mismatch), (zmq.EVENT_DISCONNECTED, 12),
        (zmq.EVENT_DISCONNECTED, 11),  # an ordinary goodbye: no refusal
        (zmq.EVENT_ACCEPTED, 13), (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 0x11000001), (zmq.EVENT_DISCONNECTED, 13),
        (zmq.EVENT_ACCEPTED, 12), (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, mismatch), (zmq.EVENT_DISCONNECTED, 12),
        (zmq.EVENT_ACCEPTED, 14), (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0), (zmq.EVENT_DISCONNECTED, 14),
    ], {11: "10.0.0.1", 12: "10.0.0.2", 13: "10.0.0.3", 14: "10.0.0.4"})
    assert count == 4  # every refusal counts; the same peer is logged once
    assert [(e["address"], e["reason"].split(" ")[0]) for e in logs] == [
        ("10.0.0.2", "no"), ("10.0.0.3", "handshake"), ("10.0.0.4", "handshake")]
    assert "protocol error 0x11000001" in logs[1]["reason"] and "cut short" in logs[2]["reason"]


def test_a_refusal_by_zap_is_left_to_the_gatekeeper():
    logs, count = _watched([(zmq.EVENT_ACCEPTED, 5), (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400),
                            (zmq.EVENT_DISCONNECTED, 5)], {5: "10.0.0.9"})
    assert (logs, count) == ([], 0)


def test_a_curve_server_without_a_zap_handler_refuses_every_peer(ctx):
    server, friend = _pair(), _pair()
    sock = ctx.socket(zmq.PULL)
    as_server(sock, server, RING)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    client = ctx.socket(zmq.PUSH)
    as_client(client, ClientCurve(friend, server.public.decode()))
    client.connect(f"tcp://127.0.0.1:{port}")
    client.send(b"hello")
    try:
        assert not sock.poll(500), "a CURVE server admitted a peer with no ZAP handler to ask"
    finally:
        client.close(0)
        sock.close(0)


def test_the_key_pair_repr_hides_the_secret():
    pair = _pair()
    assert pair.secret.decode() not in repr(pair) and pair.public.decode() in repr(pair)


def test_admitted_keys_are_the_boards_on_the_ring_and_the_clients_on_the_client_socket():
    boards = {name: _pair().public.decode() for name in ("drafter", "stage-1", "verifier", "scheduler")}
    client = _pair().public.decode()
    spec = ClusterSpec(base="b", draft="d", drafter=Placement("drafter", public_key=boards["drafter"]),
                       stages=(Placement("stage-1", public_key=boards["stage-1"]),),
                       verifier=Placement("verifier", public_key=boards["verifier"]),
                       scheduler=Placement("scheduler", public_key=boards["scheduler"]),
                       curve=Curve(key_file="/k/client.key_secret", client_keys=(client,)))
    admitted = admitted_keys(spec)
    assert admitted["ring"] == {k.encode() for k in boards.values()}
    assert admitted["client"] == {client.encode()}
    assert ClusterSpec.from_json(spec.to_json()) == spec  # the keys survive the cluster file


def _curve_scheduler(ctx: zmq.Context, own: KeyPair, clients: set[bytes], wait_ms: int = RECEIVE_TIMEOUT_MS,
                     refused: threading.Event | None = None):
    """A ROUTER in the client domain that answers one GenerateRequest with a GenerateReply, in a thread."""
    gate = Gatekeeper(ctx, {CLIENT: frozenset(clients)}, on_refused=refused.set if refused else None)
    gate.start()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    as_server(router, own, CLIENT)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def answer() -> None:
        if router.poll(wait_ms):
            identity, *frames = router.recv_multipart()
            request = decode(frames)
            assert isinstance(request, GenerateRequest)
            router.send_multipart([identity, *encode(GenerateReply(ok=True, token_ids=(4, 2), ref=request.ref))])

    thread = threading.Thread(target=answer)
    thread.start()
    return gate, router, thread, f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize("via", ["client", "http_api"])
def test_the_cli_client_and_the_http_api_reach_a_curve_scheduler_with_the_clients_key(ctx, via):
    server, client = _pair(), _pair()
    gate, router, thread, endpoint = _curve_scheduler(ctx, server, {client.public})
    curve = ClientCurve(client, server.public.decode())
    try:
        if via == "client":
            with Client(endpoint, RECEIVE_TIMEOUT_MS / 1000, curve) as cli:
                reply = cli.generate("hi")
        else:
            reply = asyncio.run(_last_reply(endpoint, curve))
    finally:
        thread.join()
        router.close(0)
        gate.stop()
    assert reply.ok and reply.token_ids == (4, 2)


async def _last_reply(endpoint: str, curve: ClientCurve) -> GenerateReply:
    async def present() -> bool:
        return False

    messages = [m async for m in exchange(endpoint, GenerateRequest(prompt="hi"), timeout_s=RECEIVE_TIMEOUT_MS / 1000,
                                          client_gone=present, curve=curve)]
    assert isinstance(messages[-1], GenerateReply)
    return messages[-1]


def test_a_client_whose_key_the_scheduler_refused_is_told_so_within_its_timeout(ctx):
    """A refused CURVE handshake leaves the DEALER without a peer, where a plain send waits for ever: the
    client gives up within its timeout (this hung a CI run when the refusal came before the send)."""
    server, stranger = _pair(), _pair()
    refused = threading.Event()
    gate, router, thread, endpoint = _curve_scheduler(ctx, server, set(), wait_ms=3000, refused=refused)
    try:
        with Client(endpoint, 0.5, ClientCurve(stranger, server.public.decode())) as cli:
            assert refused.wait(RECEIVE_TIMEOUT_MS / 1000), "the gatekeeper was never asked about the stranger"
            time.sleep(0.2)  # the failed handshake's pipe is gone
            with pytest.raises(ClusterUnavailable):
                cli.status(timeout_s=0.5)
    finally:
        thread.join()
        router.close(0)
        gate.stop()


def test_the_http_api_gives_up_on_a_send_no_scheduler_takes(monkeypatch):
    """The HTTP API's send has the same bound, so its HTTP request is answered (503) rather than never."""
    def never(*_, **__) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()  # what a send waits on with no peer: never done

    async def present() -> bool:
        return False

    async def drain() -> None:
        async for _ in exchange("tcp://127.0.0.1:9", GenerateRequest(prompt="hi"), timeout_s=0.3,
                                client_gone=present):
            pass

    monkeypatch.setattr(zmq.asyncio.Socket, "send_multipart", never)
    with pytest.raises(ClusterUnavailable, match="could not reach the scheduler"):
        asyncio.run(asyncio.wait_for(drain(), 10))  # a hang fails with TimeoutError instead
