"""The replay book: interrupted requests resume once the ring is whole, or fail past the bound, by name."""

from __future__ import annotations

from common.speculation.modes import DraftSettings
from common.wire.client import GenerateRequest
from common.wire.commands import EndRequest, StartRequest
from common.wire.reports import Verdict
from services.scheduler.admission import Capacity
from services.scheduler.attempts import attempt_id, request_id_of
from services.scheduler.core import SchedulerCore, TextCodec
from services.scheduler.replay import Outage, Replays

SERVICES = ["drafter", "stage-1", "verifier"]

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


def _core(codec: TextCodec | None = None) -> SchedulerCore:
    return SchedulerCore(SERVICES, codec, [0], DraftSettings(), capacity=Capacity(context_tokens=100))


def _prefill(core: SchedulerCore, request_id: str, token: int) -> list:
    return core.handle(Verdict(request_id, 0, 0, 0, "prefill", next_token=token, rows=1))


def test_resume_starts_from_the_committed_context_with_the_remaining_budget() -> None:
    core = _core()
    core.submit("client:a", GenerateRequest(prompt="", prompt_ids=(5, 6, 7), max_new_tokens=8, stream=True))
    chunks = [m for d, m in _prefill(core, "r1", 42) if d == "client:a"]
    assert [c.token_ids for c in chunks] == [(42,)]
    ends = core.interrupt("r1", "interrupted: stage-1 restarted")
    assert {(d, m.request_id) for d, m in ends if isinstance(m, EndRequest)} == {(s, "r1") for s in SERVICES}
    starts = [m for _, m in core.resume("r1") if isinstance(m, StartRequest)]
    assert {m.request_id for m in starts} == {"r1~1"} and len(starts) == len(SERVICES)
    assert starts[0].prompt == (5, 6, 7, 42) and starts[0].max_new_tokens == 7
    assert _prefill(core, "r1", 43) == []  # a late verdict of the lost attempt touches nothing
    (chunk,) = [m for d, m in _prefill(core, "r1~1", 43) if d == "client:a"]
    assert chunk.request_id == "r1" and chunk.token_ids == (43,)  # the stream continues
    assert core.jobs["r1~1"].output == [42, 43]


def test_interrupting_a_finished_request_answers_it_without_the_lost_stats() -> None:
    core = _core()
    core.submit("client:a", GenerateRequest(prompt="", prompt_ids=(5, 6), max_new_tokens=1))
    outs = _prefill(core, "r1", 42)
    assert not [m for d, m in outs if d == "client:a"]  # waiting for every service's stats
    (reply,) = [m for d, m in core.interrupt("r1", "interrupted") if d == "client:a"]
    assert reply.ok and reply.token_ids == (42,) and reply.stats["replays"] == 0
    assert not core.jobs


def test_the_streamed_text_continues_across_a_replay() -> None:
    letters = TextCodec(encode=lambda text, raw: [ord(c) for c in text], decode=lambda ids: "".join(map(chr, ids)))
    core = _core(letters)
    core.submit("client:a", GenerateRequest(prompt="ab", max_new_tokens=4, stream=True))
    chunks = [m for d, m in _prefill(core, "r1", ord("x")) if d == "client:a"]
    core.interrupt("r1", "interrupted")
    core.resume("r1")
    chunks += [m for d, m in _prefill(core, "r1~1", ord("y")) if d == "client:a"]
    assert "".join(c.text for c in chunks) == "xy"  # nothing sent twice
