"""What a core's shared forward hands the service loop: messages to send, requests that failed, forwards run.

A stage or the verifier holds each arrived segment until the loop has drained every message that
arrived (:mod:`services.runtime`), then forwards the waiting segments of all its requests at once
(``run_batch``). A failure while planning one request's part fails that request alone; a failure of the
shared forward fails every request in it. The loop sends, fails and counts (rows per forward and
requests per forward, :class:`common.observability.metrics.ServiceMetrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.wire.codec import Message

Outbound = tuple[str, Message]  # (destination, message)


@dataclass(frozen=True)
class Forward:
    """One model call: how many requests' rows it carried, and how many rows in all."""

    requests: int
    rows: int


@dataclass
class Batched:
    sends: list[Outbound] = field(default_factory=list)
    failed: list[tuple[str, Exception]] = field(default_factory=list)  # (request id, what went wrong)
    forwards: list[Forward] = field(default_factory=list)

    def fail(self, request_ids: list[str], exc: Exception) -> None:
        self.failed += [(request_id, exc) for request_id in request_ids]
