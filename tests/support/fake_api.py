"""The HTTP API in front of a fake scheduler (a ROUTER thread that answers from a script), for route tests.

``FakeScheduler.answer`` maps each GenerateRequest to the messages sent back; every request is kept in
``requests``. ``serve_api`` runs ``create_app`` under uvicorn in a thread on a free loopback port.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import uvicorn
import zmq

from common.wire.client import GenerateChunk, GenerateReply, GenerateRequest
from common.wire.codec import Message, decode, encode
from common.wire.errors import ProtocolError

Script = Callable[[GenerateRequest], list[Message]]


def echo_script(request: GenerateRequest) -> list[Message]:
    """One chunk holding the seed's last digit as text, then a successful reply."""
    text = str(request.seed % 10)
    return [GenerateChunk("r1", (40,), text), GenerateReply(ok=True, text=text, token_ids=(40,))]


class FakeScheduler:
    def __init__(self, answer: Script = echo_script) -> None:
        self.answer = answer
        self.requests: list[GenerateRequest] = []
        self._router = zmq.Context.instance().socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        port = self._router.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._router.close(0)

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._router.poll(50):
                continue
            identity, *frames = self._router.recv_multipart()
            try:
                msg = decode(frames)
            except ProtocolError:
                continue
            if isinstance(msg, GenerateRequest):
                self.requests.append(msg)
                for out in self.answer(msg):  # as the scheduler does, each answer echoes its request's ref
                    own = replace(out, ref=msg.ref) if isinstance(out, GenerateChunk | GenerateReply) else out
                    self._router.send_multipart([identity, *encode(own)])


@contextmanager
def serve_api(settings) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT``) of ``create_app(settings)`` served in a thread."""
    from services.api.app import create_app

    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def post(base: str, path: str, body: dict | str) -> tuple[int, str, bytes]:
    """Status, content type and raw body of a plain HTTP POST (what curl would get)."""
    host, port = base.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    payload = body if isinstance(body, str) else json.dumps(body)
    conn.request("POST", path, payload, {"Content-Type": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, response.getheader("content-type") or "", raw


def without_chat_template(model_dir: Path) -> Path:
    """Strip the chat template from a saved tokenizer (a base model that has none)."""
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    return model_dir
