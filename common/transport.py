"""ZeroMQ sockets carrying protocol messages: PUSH/PULL links, zero-copy tensor frames."""

from __future__ import annotations

import zmq

from common.protocol import Message, decode, encode

LINGER_MS = 1000  # on close, give queued messages a second to leave, then drop them


def pull(ctx: zmq.Context, endpoint: str, max_message_bytes: int = 0) -> zmq.Socket:
    """A PULL socket bound at ``endpoint``; a peer sending a frame over ``max_message_bytes`` (> 0) is
    disconnected by ZeroMQ."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    if max_message_bytes > 0:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.bind(endpoint)
    return sock


def push(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.connect(endpoint)
    return sock


def send(sock: zmq.Socket, msg: Message) -> None:
    sock.send_multipart(encode(msg), copy=False)


def recv(sock: zmq.Socket, max_bytes: int = 0) -> Message:
    """Decode the next message; raises ProtocolError for a malformed (or oversized) one."""
    return decode(sock.recv_multipart(copy=False), max_bytes)
