"""The ZeroMQ client against a fake scheduler: abandoned generations are cancelled."""

from __future__ import annotations

import threading

import pytest
import zmq

from common.wire.client import CancelRequest, GenerateChunk, GenerateReply, GenerateRequest
from common.wire.codec import decode, encode
from services.client import Client


@pytest.fixture
def scheduler():
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    yield router, f"tcp://127.0.0.1:{port}"
    router.close(0)


def _receive(router: zmq.Socket):
    assert router.poll(5000), "the client sent nothing"
    identity, *frames = router.recv_multipart()
    return identity, decode(frames)


def test_an_interrupted_generate_sends_cancel(scheduler, monkeypatch):
    router, endpoint = scheduler
    client = Client(endpoint, timeout_s=5)

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(client._sock, "poll", interrupted)
    with pytest.raises(KeyboardInterrupt):
        client.generate("hi")
    identity, first = _receive(router)
    same, second = _receive(router)
    assert isinstance(first, GenerateRequest) and not first.stream
    assert isinstance(second, CancelRequest) and same == identity, "cancelled on the request's own connection"
    client.close()


def test_a_stream_yields_chunks_then_the_reply_and_closing_it_early_cancels(scheduler):
    router, endpoint = scheduler
    client = Client(endpoint, timeout_s=5)
    stream = client.stream("hi", max_new_tokens=3)
    chunk = GenerateChunk("r1", (5,), "a")
    reply = GenerateReply(ok=True, text="ab", token_ids=(5, 6))

    def answer() -> None:
        identity, request = _receive(router)
        assert isinstance(request, GenerateRequest) and request.stream
        for m in (chunk, reply):
            router.send_multipart([identity, *encode(m)])

    worker = threading.Thread(target=answer)
    worker.start()
    assert list(stream) == [chunk, reply]
    worker.join()

    early = client.stream("again")
    thread = threading.Thread(target=lambda: router.send_multipart([_receive(router)[0], *encode(chunk)]))
    thread.start()
    assert next(early) == chunk
    thread.join()
    early.close()
    _, cancel = _receive(router)
    assert isinstance(cancel, CancelRequest)
    client.close()
