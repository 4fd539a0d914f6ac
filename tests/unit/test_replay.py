"""The replay book: interrupted requests resume once the ring is whole, or fail past the bound, by name."""

from __future__ import annotations

from services.scheduler.replay import Outage, Replays, attempt_id, request_id_of

SILENT = Outage("stage-2", "went silent (no heartbeat for 3.2 s, liveness timeout 3 s)", since=100.0)


def test_attempt_ids_keep_the_client_request_id() -> None:
    assert attempt_id("r3", 0) == "r3"
    assert attempt_id("r3", 1) == "r3~1" and attempt_id("r3~1", 2) == "r3~2"
    assert request_id_of("r3~2") == "r3" and request_id_of("r3") == "r3"


def test_a_whole_ring_resumes_every_waiting_request_once() -> None:
    book = Replays(bound_s=30.0)
    book.interrupted("r1", SILENT)
    book.interrupted("r2~1", SILENT)
    assert book.due(ring_healthy=False, now=110.0) == ([], [])
    resume, failed = book.due(ring_healthy=True, now=111.0)
    assert resume == [("r1", SILENT), ("r2~1", SILENT)] and failed == []
    assert book.due(ring_healthy=True, now=112.0) == ([], [])


def test_past_the_bound_the_error_names_the_request_and_the_service() -> None:
    book = Replays(bound_s=30.0)
    book.interrupted("r2~1", SILENT)
    assert book.due(ring_healthy=False, now=130.0) == ([], [])  # exactly at the bound: still waiting
    resume, failed = book.due(ring_healthy=False, now=130.5)
    assert resume == []
    assert failed == [("r2~1", "request r2 failed: service stage-2 went silent (no heartbeat for 3.2 s, liveness "
                               "timeout 3 s), and the ring did not recover within 30 s")]
    assert not book.waiting
