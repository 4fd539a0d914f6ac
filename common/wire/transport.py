"""ZeroMQ sockets carrying protocol messages: PUSH/PULL links, zero-copy tensor frames, CURVE on a LAN."""

from __future__ import annotations

import zmq

from common.wire.codec import Message, decode, encode
from common.wire.curve import RING, ClientCurve, KeyPair, as_client, as_server

LINGER_MS = 1000  # on close, give queued messages a second to leave, then drop them


def pull(ctx: zmq.Context, endpoint: str, max_message_bytes: int = 0, own: KeyPair | None = None) -> zmq.Socket:
    """A PULL socket bound at ``endpoint``; a peer sending a frame over ``max_message_bytes`` (> 0) is
    disconnected by ZeroMQ. With ``own`` keys, a CURVE server admitting the ring's keys only."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    as_server(sock, own, RING)
    if max_message_bytes > 0:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.bind(endpoint)
    return sock


def push(ctx: zmq.Context, endpoint: str, curve: ClientCurve | None = None) -> zmq.Socket:
    """A PUSH socket connected to ``endpoint``; with ``curve``, a CURVE client of that server."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    as_client(sock, curve)
    sock.connect(endpoint)
    return sock


def send(sock: zmq.Socket, msg: Message) -> None:
    sock.send_multipart(encode(msg), copy=False)


def recv(sock: zmq.Socket, max_bytes: int = 0) -> Message:
    """Decode the next message; raises ProtocolError for a malformed (or oversized) one."""
    return decode(sock.recv_multipart(copy=False), max_bytes)
