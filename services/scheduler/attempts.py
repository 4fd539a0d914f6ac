"""Ring ids of a request's attempts: a replayed request runs as "r3~1", "r3~2", ... (services/scheduler/replay.py).

An attempt has an id of its own so that its earlier attempts' late messages cannot touch it; the client only
ever sees the request's own id.
"""

from __future__ import annotations

ATTEMPT = "~"


def attempt_id(request_id: str, attempt: int) -> str:
    """The ring id of a request's ``attempt`` (0: the first, under the request's own id)."""
    origin = request_id_of(request_id)
    return f"{origin}{ATTEMPT}{attempt}" if attempt else origin


def request_id_of(ring_id: str) -> str:
    """The client's request id of a ring id."""
    return ring_id.partition(ATTEMPT)[0]
