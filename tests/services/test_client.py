"""The ZeroMQ client against a fake scheduler: abandoned generations are cancelled."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import zmq

from common.wire.client import (
    NOT_ADMITTED,
    CancelRequest,
    GenerateChunk,
    GenerateReply,
    GenerateRequest,
    ResumeRequest,
    WrongReply,
)
from common.wire.codec import decode, encode
from services.client import Client, ClusterUnavailable


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
            router.send_multipart([identity, *encode(replace(m, ref=request.ref))])

    worker = threading.Thread(target=answer)
    worker.start()
    assert [replace(m, ref="") for m in stream] == [chunk, reply]
    worker.join()

    early = client.stream("again")

    def first_chunk() -> None:
        identity, request = _receive(router)
        router.send_multipart([identity, *encode(replace(chunk, ref=request.ref))])

    thread = threading.Thread(target=first_chunk)
    thread.start()
    assert next(early).token_ids == chunk.token_ids
    thread.join()
    early.close()
    _, cancel = _receive(router)
    assert isinstance(cancel, CancelRequest)
    client.close()


def test_a_reply_of_another_request_is_refused_never_handed_over(scheduler):
    """The soak's failure: a restarted scheduler told NOT_ADMITTED about a request it had just answered; the
    client took it for its next request's answer and sent that one twice, so the one after got its reply."""
    router, endpoint = scheduler
    client = Client(endpoint, timeout_s=5)

    def answer() -> None:
        identity, first = _receive(router)
        assert isinstance(first, GenerateRequest) and first.ref
        for m in (GenerateReply(ok=True, token_ids=first.prompt_ids, ref=first.ref),
                  GenerateReply(ok=False, error=NOT_ADMITTED, code="failed", ref=first.ref)):  # trailing
            router.send_multipart([identity, *encode(m)])
        identity, second = _receive(router)
        assert isinstance(second, GenerateRequest) and second.ref not in ("", first.ref)
        while not isinstance(message := _receive(router)[1], CancelRequest):  # refused: cancelled, not resent
            assert isinstance(message, ResumeRequest) and message.ref == second.ref
        identity, third = _receive(router)  # on a new connection
        router.send_multipart([identity, *encode(GenerateReply(ok=True, token_ids=third.prompt_ids, ref=third.ref))])

    worker = threading.Thread(target=answer)
    worker.start()
    assert client.generate("", prompt_ids=(1,)).token_ids == (1,)
    with pytest.raises(WrongReply, match=r"^a generate_reply of request [0-9a-f]+ reached the client waiting for"):
        client.generate("", prompt_ids=(2,))
    assert client.generate("", prompt_ids=(3,)).token_ids == (3,)
    worker.join()
    client.close()


def test_a_scheduler_that_takes_nothing_is_unavailable_not_a_hang(scheduler, monkeypatch):
    """A DEALER with no connected peer (a scheduler whose CURVE handshake refused this client) blocks a plain
    send for ever; the client gives up within its timeout instead."""
    _, endpoint = scheduler
    client = Client(endpoint, timeout_s=0.2)
    waited: list[int] = []

    def full(*_, **__):
        raise zmq.Again

    def no_room(timeout_ms, flags):
        waited.append(timeout_ms)
        return 0

    monkeypatch.setattr(client._sock, "send_multipart", full)
    monkeypatch.setattr(client._sock, "poll", no_room)
    with pytest.raises(ClusterUnavailable, match="could not reach the scheduler"):
        client.status(timeout_s=0.2)
    assert waited == [200]
    client.close()
