"""ZeroMQ sockets carrying protocol messages: PUSH/PULL links, zero-copy tensor frames."""

from __future__ import annotations

import zmq

from common.protocol import Message, decode, encode

LINGER_MS = 1000  # on close, give queued messages a second to leave, then drop them


def pull(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A PULL socket bound at ``endpoint`` (binds on every interface of the host for LAN use)."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


def push(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.connect(endpoint)
    return sock


def send(sock: zmq.Socket, msg: Message) -> None:
    sock.send_multipart(encode(msg), copy=False)


def recv(sock: zmq.Socket) -> Message:
    """Decode the next message; raises ProtocolError for a malformed one."""
    return decode(sock.recv_multipart(copy=False))
