"""Client of the scheduler's ROUTER socket: what the CLI, the HTTP API, tests and benchmarks talk to."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace

import zmq

from common.wire.client import (
    NOT_ADMITTED,
    CancelRequest,
    GenerateChunk,
    GenerateReply,
    GenerateRequest,
    ResumeRequest,
    StatusReply,
    StatusRequest,
    own_answer,
)
from common.wire.codec import Message, decode, encode
from common.wire.commands import Shutdown
from common.wire.curve import ClientCurve, as_client
from common.wire.errors import ProtocolError

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20  # as ClusterSpec.max_message_bytes; a cluster's own limit is passed in
CANCEL_LINGER_MS = 1000  # how long a closing socket may still try to deliver a CancelRequest
RESUME_AFTER_S = 1.0  # a generation silent this long says ResumeRequest (heard only by a restarted scheduler)


def routing_id() -> bytes:
    """A fixed ZeroMQ identity for one DEALER: a restarted scheduler still knows whom a request belongs to
    (the first byte is never 0, which ZeroMQ reserves)."""
    return b"c" + secrets.token_bytes(15)


def fresh_ref() -> str:
    """A request's own id on the client side (GenerateRequest.ref): its chunks and reply carry it back."""
    return secrets.token_hex(8)


def fresh_seed() -> int:
    """A seed for a request that names none: fresh randomness per request, as OpenAI's API samples."""
    return secrets.randbits(63)


class ClusterUnavailable(RuntimeError):
    """The scheduler did not answer in time."""


class Client:
    """One DEALER connection (CURVE with ``curve``); one question at a time. An abandoned generation is cancelled."""

    def __init__(self, endpoint: str, timeout_s: float = 600.0, curve: ClientCurve | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes  # a larger answer is refused (MAXMSGSIZE and decode)
        self._curve = curve
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock = self._connect()

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, prompt: str, **options) -> GenerateReply:
        """The final reply; interrupted (Ctrl-C) or timed out, the request is cancelled on the cluster."""
        *_, reply = self._exchange(GenerateRequest(prompt=prompt, stream=False, **options))
        assert isinstance(reply, GenerateReply)
        return reply

    def stream(self, prompt: str, **options) -> Iterator[GenerateChunk | GenerateReply]:
        """Chunks as tokens are committed, then the final reply. Closing the iterator early cancels."""
        yield from self._exchange(GenerateRequest(prompt=prompt, stream=True, **options))

    def status(self, timeout_s: float = 5.0) -> StatusReply:
        reply = self._ask(StatusRequest(), timeout_s)
        if not isinstance(reply, StatusReply):
            raise ProtocolError(f"expected a status reply, got {reply.KIND}")
        return reply

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._ask(Shutdown(cmd_seq=-1), timeout_s)

    def _exchange(self, request: GenerateRequest) -> Iterator[GenerateChunk | GenerateReply]:
        """Across a scheduler restart too: the socket reconnects by itself under the same identity, and each
        silence of RESUME_AFTER_S says how many tokens arrived, so the restarted scheduler sends the rest.
        Only this request's own chunks and reply (by its ref) are handed over; another's raises WrongReply."""
        request = replace(request, ref=request.ref or fresh_ref())
        self._send(request, self.timeout_s)
        finished = False
        received = 0
        try:
            while not finished:
                msg = own_answer(self._receive(self.timeout_s, resume=ResumeRequest(received, request.ref)),
                                 request.ref)
                if isinstance(msg, GenerateReply) and msg.error == NOT_ADMITTED and not received:
                    self._send(request, self.timeout_s)  # lost with a scheduler: again
                    continue
                finished = isinstance(msg, GenerateReply)
                if isinstance(msg, GenerateChunk):
                    received += len(msg.token_ids)
                yield msg
        finally:  # interrupted, timed out, or the caller stopped reading: free the ring
            if not finished:
                self._cancel()

    def _ask(self, msg: Message, timeout_s: float) -> Message:
        self._send(msg, timeout_s)
        return self._receive(timeout_s)

    def _send(self, msg: Message, timeout_s: float) -> None:
        """Send within ``timeout_s``: a DEALER with no connected peer (a scheduler that is down, or one whose
        CURVE handshake refused this client) would block in a plain send for ever."""
        frames = encode(msg)
        for wait_ms in (0, int(timeout_s * 1000)):  # at once, or once a peer can take it
            if wait_ms and not self._sock.poll(wait_ms, zmq.POLLOUT):
                break
            with contextlib.suppress(zmq.Again):
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
        self._sock.close(0)
        self._sock = self._connect()
        raise ClusterUnavailable(f"could not reach the scheduler at {self.endpoint} within {timeout_s:.0f} s")

    def _receive(self, timeout_s: float, resume: ResumeRequest | None = None) -> Message:
        deadline = time.monotonic() + timeout_s
        while resume is not None and not self._sock.poll(int(RESUME_AFTER_S * 1000)):
            if time.monotonic() >= deadline:
                break
            with contextlib.suppress(zmq.Again):  # queued while the scheduler is away, sent on reconnecting
                self._sock.send_multipart(encode(resume), flags=zmq.NOBLOCK, copy=False)
        if not self._sock.poll(max(int((deadline - time.monotonic()) * 1000), 0)):
            # The DEALER would deliver a late answer to the next question: start over with a new socket.
            self._sock.close(0)
            self._sock = self._connect()
            raise ClusterUnavailable(f"no answer from the scheduler at {self.endpoint} within {timeout_s:.0f} s")
        return decode(self._sock.recv_multipart(copy=False), self.max_message_bytes)

    def _cancel(self) -> None:
        """Cancel this connection's requests; a new socket keeps their late replies from the next question."""
        if not self._sock.closed:  # a closed connection is noticed by the scheduler on its own
            with contextlib.suppress(zmq.Again):  # no peer to take it: closing cancels as well
                self._sock.send_multipart(encode(CancelRequest()), flags=zmq.NOBLOCK, copy=False)
            self._sock.close(linger=CANCEL_LINGER_MS)  # the disconnect alone would cancel too
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.setsockopt(zmq.ROUTING_ID, routing_id())
        as_client(sock, self._curve)
        sock.connect(self.endpoint)
        return sock
