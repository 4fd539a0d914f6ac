"""Client of the scheduler's ROUTER socket: what the CLI, tests and benchmarks talk to."""

from __future__ import annotations

import zmq

from common.protocol import (
    GenerateReply,
    GenerateRequest,
    Message,
    ProtocolError,
    Shutdown,
    StatusReply,
    StatusRequest,
    decode,
    encode,
)


class ClusterUnavailable(RuntimeError):
    """The scheduler did not answer in time."""


class Client:
    def __init__(self, endpoint: str, timeout_s: float = 600.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, prompt: str, **options) -> GenerateReply:
        reply = self._ask(GenerateRequest(prompt=prompt, **options), self.timeout_s)
        if not isinstance(reply, GenerateReply):
            raise ProtocolError(f"expected a generate reply, got {reply.KIND}")
        return reply

    def status(self, timeout_s: float = 5.0) -> StatusReply:
        reply = self._ask(StatusRequest(), timeout_s)
        if not isinstance(reply, StatusReply):
            raise ProtocolError(f"expected a status reply, got {reply.KIND}")
        return reply

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._ask(Shutdown(cmd_seq=-1), timeout_s)

    def _ask(self, msg: Message, timeout_s: float) -> Message:
        self._sock.send_multipart(encode(msg), copy=False)
        if not self._sock.poll(int(timeout_s * 1000)):
            # The DEALER would deliver a late answer to the next question: start over with a new socket.
            self._sock.close(0)
            self._sock = self._ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self.endpoint)
            raise ClusterUnavailable(f"no answer from the scheduler at {self.endpoint} within {timeout_s:.0f} s")
        return decode(self._sock.recv_multipart(copy=False))
