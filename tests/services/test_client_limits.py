"""Every receiving client socket is bounded: an answer over the cluster's limit is refused, never decoded."""

from __future__ import annotations

import asyncio
import threading

import pytest
import zmq

from common.wire.client import GenerateChunk, GenerateReply, GenerateRequest
from common.wire.codec import decode, encode
from services.api.ring import exchange
from services.client import Client, ClusterUnavailable

LIMIT = 2048
HUGE = GenerateReply(ok=True, text="x" * (4 * LIMIT))


@pytest.fixture
def oversized_scheduler():
    """Answers every request with a reply larger than LIMIT."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                identity, *frames = router.recv_multipart()
                if isinstance(decode(frames), GenerateRequest):
                    router.send_multipart([identity, *encode(HUGE)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{port}"
    stop.set()
    thread.join(5)
    router.close(0)


def test_the_cli_client_refuses_an_oversized_answer(oversized_scheduler):
    with Client(oversized_scheduler, timeout_s=1.5, max_message_bytes=LIMIT) as client:
        assert client._sock.getsockopt(zmq.MAXMSGSIZE) == LIMIT
        with pytest.raises(ClusterUnavailable):
            client.generate("hi")


def test_the_api_ring_client_refuses_an_oversized_answer(oversized_scheduler):
    async def run() -> list[GenerateChunk | GenerateReply]:
        async def here() -> bool:
            return False

        request = GenerateRequest(prompt="hi", stream=True)
        return [m async for m in exchange(oversized_scheduler, request, timeout_s=1.5, client_gone=here,
                                          max_bytes=LIMIT)]

    with pytest.raises(ClusterUnavailable):
        asyncio.run(run())
