"""The HTTP API's way to the scheduler: one asyncio DEALER per HTTP request, under a fixed ZeroMQ identity;
a silence says ResumeRequest, so a request outlives a scheduler restart (services/scheduler/restore.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import zmq
import zmq.asyncio

from common.wire.client import (
    NOT_ADMITTED,
    CancelRequest,
    GenerateChunk,
    GenerateReply,
    GenerateRequest,
    ResumeRequest,
    own_answer,
)
from common.wire.codec import decode, encode
from common.wire.curve import ClientCurve, as_client
from services.client import (
    CANCEL_LINGER_MS,
    DEFAULT_MAX_MESSAGE_BYTES,
    RESUME_AFTER_S,
    ClusterUnavailable,
    fresh_ref,
    routing_id,
)

POLL_INTERVAL_S = 0.25  # how often a waiting request checks that its HTTP client is still there


async def exchange(
    endpoint: str,
    request: GenerateRequest,
    *,
    timeout_s: float,
    client_gone: Callable[[], Awaitable[bool]],
    curve: ClientCurve | None = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> AsyncIterator[GenerateChunk | GenerateReply]:
    """Chunks, then the final reply. Closed early, or its HTTP client gone, the ring request is cancelled.
    With ``curve``, the DEALER is a CURVE client of the scheduler (a LAN cluster). An answer over
    ``max_bytes`` is refused (MAXMSGSIZE drops a frame over it; decode, a message). Only this request's own
    chunks and reply (by its ref) are handed over; another's raises WrongReply."""
    request = replace(request, ref=request.ref or fresh_ref())
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.ROUTING_ID, routing_id())  # a restarted scheduler still knows this request's client
    as_client(sock, curve)
    sock.connect(endpoint)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    next_check = loop.time() + POLL_INTERVAL_S
    finished = False
    received = 0
    heard = loop.time()
    try:
        await _send(sock, encode(request), endpoint, timeout_s)
        while not finished:
            if await sock.poll(int(POLL_INTERVAL_S * 1000)):
                msg = own_answer(decode(await sock.recv_multipart(), max_bytes), request.ref)
                heard = loop.time()
                if isinstance(msg, GenerateReply) and msg.error == NOT_ADMITTED and not received:
                    await _send(sock, encode(request), endpoint, timeout_s)  # lost with a scheduler before admitted
                    continue
                finished = isinstance(msg, GenerateReply)
                if isinstance(msg, GenerateChunk):
                    received += len(msg.token_ids)
                yield msg
            elif loop.time() > deadline:
                raise ClusterUnavailable(f"no answer from the scheduler at {endpoint} within {timeout_s:.0f} s")
            elif loop.time() - heard > RESUME_AFTER_S:  # heard only by a scheduler restarted meanwhile
                heard = loop.time()
                with contextlib.suppress(zmq.Again):
                    await sock.send_multipart(encode(ResumeRequest(received, request.ref)), flags=zmq.NOBLOCK)
            if not finished and loop.time() >= next_check:  # also while chunks keep coming
                next_check = loop.time() + POLL_INTERVAL_S
                if await client_gone():
                    return
    finally:
        if finished:
            sock.close(0)
        else:  # the disconnect alone would cancel too; the explicit message is quicker
            sock.send_multipart(encode(CancelRequest()))  # queued at once; closing lingers to deliver it
            sock.close(linger=CANCEL_LINGER_MS)


async def _send(sock: zmq.asyncio.Socket, frames: list[bytes | memoryview], endpoint: str, timeout_s: float) -> None:
    """Send within ``timeout_s``: a DEALER with no connected peer (a scheduler that is down, or one whose CURVE
    handshake refused this API) would wait for ever, and the HTTP request would never be answered."""
    try:
        await asyncio.wait_for(sock.send_multipart(frames), timeout_s)
    except TimeoutError:
        raise ClusterUnavailable(f"could not reach the scheduler at {endpoint} within {timeout_s:.0f} s") from None
