"""After a scheduler restart (services/scheduler/restore.py): each ResumeRequest is about one request (its ref),
so one that trails its request's reply never makes the client send that request again, and a new request
never gets an id the journal already holds. Pure, without a ring."""

from __future__ import annotations

from common.speculation.modes import DraftSettings
from common.wire.client import NOT_ADMITTED, GenerateReply, GenerateRequest, ResumeRequest
from common.wire.reports import StageStats, Verdict
from services.scheduler.admission import Capacity
from services.scheduler.core import SchedulerCore, TextCodec
from services.scheduler.journal import Journal, Unfinished, read
from services.scheduler.restore import Orphans

LETTERS = TextCodec(encode=lambda text, raw: [ord(c) for c in text], decode=lambda ids: "".join(map(chr, ids)))


def _core() -> SchedulerCore:
    return SchedulerCore(["drafter", "stage-1", "verifier"], LETTERS, [0], DraftSettings(),
                         capacity=Capacity(context_tokens=100))


def test_a_resume_that_trails_its_reply_gets_nothing_and_a_lost_request_is_told_with_its_ref() -> None:
    # The soak's failure: a client waited RESUME_AFTER_S for request q1 and said ResumeRequest just as q1's
    # reply left. Told NOT_ADMITTED, it sent its next request q2 twice, and q3 got q2's second reply.
    orphans = Orphans(10.0, None, restarted_at=0.0)
    orphans.answered("client:aa", "q1")
    assert orphans.resume("client:aa", ResumeRequest(received=0, ref="q1"), now=1.0) == []
    ((client, told),) = orphans.resume("client:aa", ResumeRequest(received=0, ref="q2"), now=1.0)
    assert client == "client:aa" and told == GenerateReply(ok=False, error=NOT_ADMITTED, code="failed", ref="q2")
    assert orphans.resume("client:aa", ResumeRequest(received=0, ref="q2"), now=2.0) == []  # told once


def test_a_resume_of_an_earlier_request_leaves_the_orphan_to_its_own() -> None:
    orphans = Orphans(10.0, None, restarted_at=0.0)
    orphans.add(Unfinished("r4", "r4", "client:aa", GenerateRequest(prompt="ab", ref="q2"), (97, 98)), now=0.0)
    held = GenerateReply(ok=True, token_ids=(5,), request_id="r4", ref="q2")
    assert orphans.hold("client:aa", held)
    assert orphans.resume("client:aa", ResumeRequest(received=0, ref="q1"), now=1.0) == []
    assert orphans.resume("client:aa", ResumeRequest(received=0, ref="q2"), now=1.0) == [("client:aa", held)]


def test_every_answer_carries_its_request_id_and_ref() -> None:
    core = _core()
    core.submit("client:aa", GenerateRequest(prompt="ab", max_new_tokens=1, ref="q1"))
    out = core.handle(_prefill("r1"))
    out += [m for s in ("drafter", "stage-1", "verifier") for m in core.handle(_stats("r1", s))]
    (reply,) = [m for _, m in out if isinstance(m, GenerateReply)]
    assert (reply.ok, reply.request_id, reply.ref) == (True, "r1", "q1")
    (invalid,) = [m for _, m in core.submit("client:aa", GenerateRequest(prompt="", ref="q2"))]  # at once
    assert (invalid.code, invalid.ref) == ("invalid", "q2")
    (cancelled,) = [m for _, m in (core.submit("client:bb", GenerateRequest(prompt="ab", ref="q3"))
                                   + core.cancel("client:bb")) if isinstance(m, GenerateReply)]
    assert (cancelled.code, cancelled.request_id, cancelled.ref) == ("cancelled", "r2", "q3")


def test_request_ids_continue_past_every_id_the_journal_ever_held(tmp_path) -> None:
    path = tmp_path / "journal.jsonl"
    first = Journal(path, resume=False)
    core = _core()
    for _ in range(3):
        core.submit("client:aa", GenerateRequest(prompt="ab", max_new_tokens=1))
    first.sync(core.jobs.values())
    first.sync([])  # all three replied
    first.close()
    for boot in (2, 3):  # each restart compacts the file to its unfinished requests: none
        again = Journal(path)
        assert (again.boot, again.recovered.last_id, again.recovered.unfinished) == (boot, 3, ())
        again.close()
    restarted = _core()
    restarted.adopt([], read(path).last_id)
    (start, *_) = [m for _, m in restarted.submit("client:bb", GenerateRequest(prompt="ab"))]
    assert start.request_id == "r4"


def _prefill(request_id: str) -> Verdict:
    return Verdict(request_id, 0, 0, 0, "prefill", next_token=ord("x"), rows=1)


def _stats(request_id: str, service: str) -> StageStats:
    return StageStats(service=service, request_id=request_id, busy_ms=1.0, forwards=1, rows=1)
