"""The dashboard's view of the cluster: the scheduler's status plus every service's Prometheus counters.

One :meth:`Board.state` call asks the scheduler for its status (an asyncio DEALER, CURVE on a LAN cluster)
and scrapes each service's metrics endpoint concurrently, then returns JSON-ready dicts. A service whose
endpoint does not answer keeps its status row, with no busy ratio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request
from typing import Any

import zmq
import zmq.asyncio
from prometheus_client.parser import text_string_to_metric_families

from common.wire.client import StatusReply, StatusRequest
from common.wire.codec import decode, encode
from common.wire.curve import ClientCurve, as_client
from common.wire.errors import ProtocolError
from services.api.dashboard.rates import History, Sample, totals
from services.api.dashboard.recorder import Recorder

STATUS_TIMEOUT_S = 2.0
SCRAPE_TIMEOUT_S = 1.0


class Board:
    """Polled by the page; remembers what it needs for rates (and restarts) between polls."""

    def __init__(self, endpoint: str, curve: ClientCurve | None, recorder: Recorder, model: str) -> None:
        self.endpoint, self.curve, self.recorder, self.model = endpoint, curve, recorder, model
        self.history = History()
        self._lock = asyncio.Lock()

    async def state(self) -> dict[str, Any]:
        async with self._lock:  # two pages polling at once: one scrape at a time keeps the rates right
            try:
                reply = await ask_status(self.endpoint, self.curve, STATUS_TIMEOUT_S)
            except (ProtocolError, OSError, TimeoutError, zmq.ZMQError) as exc:
                return self._unreachable(str(exc) or type(exc).__name__)
            scraped = await asyncio.gather(*(scrape(s.metrics) for s in reply.services))
            now = time.time()
            rows, scheduler = [], {}
            for service, values in zip(reply.services, scraped, strict=True):
                if values is not None:
                    self.history.add(service.name, Sample(now, service.pid, totals(values)))
                figures = self.history.figures(service.name)
                rows.append({**dataclasses.asdict(service), "busy_ratio": figures.busy_ratio,
                             "scraped": values is not None, "restarts": self.history.restarts.get(service.name, 0)})
                if service.role == "scheduler":
                    scheduler = {"acceptance": figures.acceptance, "acceptance_total": figures.acceptance_total,
                                 "ttft_ms": figures.ttft_ms, "ttft_total_ms": figures.ttft_total_ms}
            return {"now": now, "reachable": True, "error": "", "ready": reply.ready, "busy": reply.busy,
                    "model": self.model, "services": rows, "scheduler": scheduler, **self._api(now)}

    def _unreachable(self, error: str) -> dict[str, Any]:
        now = time.time()
        return {"now": now, "reachable": False, "error": f"the scheduler at {self.endpoint} did not answer: {error}",
                "ready": False, "busy": False, "model": self.model, "services": [], "scheduler": {}, **self._api(now)}

    def _api(self, now: float) -> dict[str, Any]:
        answers = [dataclasses.asdict(a) for a in self.recorder.answers()[-5:]]
        return {"api": {"tokens_per_s": self.recorder.tokens_per_s(now), "answers": answers}}


async def ask_status(endpoint: str, curve: ClientCurve | None, timeout_s: float) -> StatusReply:
    """The scheduler's status; :class:`TimeoutError` when it does not answer in time."""
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    as_client(sock, curve)
    sock.connect(endpoint)
    try:
        await sock.send_multipart(encode(StatusRequest()))
        if not await sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no status within {timeout_s:g} s")
        msg = decode(await sock.recv_multipart())
    finally:
        sock.close(0)
    if not isinstance(msg, StatusReply):
        raise ProtocolError(f"expected a status reply, got {msg.KIND}")
    return msg


async def scrape(url: str) -> dict[str, float] | None:
    """``sample name -> value summed over labels`` of one metrics endpoint; None when off or not answering."""
    if not url:
        return None
    try:
        text = await asyncio.to_thread(_get, url)
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
        return out
    except (OSError, ValueError):
        return None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        return response.read().decode("utf-8", "replace")
