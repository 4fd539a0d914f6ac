"""The scheduler's journal (services/scheduler/journal.py) and how a restarted scheduler takes up what it
holds (services/scheduler/restore.py): pure, without a ring."""

from __future__ import annotations

import json

from common.speculation.modes import DraftSettings
from common.wire.client import NOT_ADMITTED, GenerateChunk, GenerateReply, GenerateRequest, ResumeRequest
from common.wire.commands import StartRequest
from common.wire.reports import Verdict
from services.scheduler.admission import Capacity
from services.scheduler.core import SchedulerCore, TextCodec
from services.scheduler.journal import Journal, read
from services.scheduler.restore import Orphans, restore_job

SERVICES = ["drafter", "stage-1", "verifier"]
LETTERS = TextCodec(encode=lambda text, raw: [ord(c) for c in text], decode=lambda ids: "".join(map(chr, ids)))


def _core(first_cmd_seq: int = 0) -> SchedulerCore:
    return SchedulerCore(SERVICES, LETTERS, [0], DraftSettings(), capacity=Capacity(context_tokens=100),
                         first_cmd_seq=first_cmd_seq)


def _prefill(core: SchedulerCore, request_id: str, token: int) -> list:
    return core.handle(Verdict(request_id, 0, 0, 0, "prefill", next_token=token, rows=1))


def _journaled_crash(tmp_path, temperature: float = 0.0):
    """A scheduler that admitted r1 and r2, committed a token of r1 and finished r2, then died."""
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    core = _core()
    core.submit("client:aa", GenerateRequest(prompt="ab", max_new_tokens=4, stream=True, temperature=temperature))
    core.submit("client:bb", GenerateRequest(prompt="cd", max_new_tokens=1))
    journal.sync(core.jobs.values())
    _prefill(core, "r1", ord("x"))
    journal.sync(core.jobs.values())
    _prefill(core, "r2", ord("z"))
    core.interrupt("r2", "stats lost")  # its reply goes out: done
    journal.sync(core.jobs.values())
    journal.close()
    return path


def test_the_journal_holds_the_unfinished_requests_with_their_committed_tokens(tmp_path) -> None:
    path = _journaled_crash(tmp_path)
    kinds = [json.loads(line)["e"] for line in path.read_text().splitlines()]
    assert kinds == ["boot", "admit", "admit", "commit", "done"]  # r2 replied before its token was synced
    with open(path, "a") as torn:
        torn.write('{"e": "commit", "id": "r1", "tok')  # a crash mid-line
    recovered = read(path)
    assert recovered.boots == 1 and recovered.last_id == 2
    (u,) = recovered.unfinished
    assert (u.request_id, u.client, u.output, u.prompt) == ("r1", "client:aa", [ord("x")], (ord("a"), ord("b")))
    assert u.request.stream and u.request.max_new_tokens == 4


def test_a_new_journal_compacts_to_the_unfinished_and_counts_boots(tmp_path) -> None:
    path = _journaled_crash(tmp_path)
    second = Journal(path)
    assert second.boot == 2
    assert [json.loads(line)["e"] for line in path.read_text().splitlines()] == ["boot", "admit", "commit", "boot"]
    assert read(path).unfinished == second.recovered.unfinished


def test_a_restored_greedy_request_continues_after_the_ring_rederives_the_last_token(tmp_path) -> None:
    (u,) = read(_journaled_crash(tmp_path)).unfinished
    core = _core(first_cmd_seq=1 << 32)
    job = restore_job(u, LETTERS)
    core.adopt([job], last_id=2)
    core.interrupt("r1", "scheduler restarted")
    (start, *_) = [m for _, m in core.resume("r1") if isinstance(m, StartRequest)]
    assert start.request_id == "r1~1" and start.prompt == (ord("a"), ord("b")) and start.max_new_tokens == 4
    assert start.cmd_seq > 1 << 32  # never taken for a repeat of the dead scheduler's commands
    outs = _prefill(core, "r1~1", ord("x"))
    assert [m for _, m in outs if isinstance(m, GenerateChunk | GenerateReply)] == []  # sent before the crash
    assert core.jobs["r1~1"].output == [ord("x")] and core.jobs["r1~1"].expect is None
    assert core.submit("client:cc", GenerateRequest(prompt="e"))[0][1].request_id == "r3"


def test_a_ring_that_rederives_another_token_fails_the_request_in_one_line(tmp_path) -> None:
    (u,) = read(_journaled_crash(tmp_path)).unfinished
    core = _core()
    core.adopt([restore_job(u, LETTERS)], last_id=2)
    core.interrupt("r1", "scheduler restarted")
    core.resume("r1")
    replies = [m for _, m in _prefill(core, "r1~1", ord("q")) if isinstance(m, GenerateReply)]
    (reply,) = replies
    assert not reply.ok
    assert reply.error == (f"request r1 failed: after the scheduler restarted, the ring re-derived token {ord('q')} "
                           f"where the journal committed {ord('x')}")


def test_an_orphan_gets_what_it_missed_then_what_was_held() -> None:
    from services.scheduler.journal import Unfinished

    u = Unfinished("r1", "r1", "client:aa", GenerateRequest(prompt="ab", stream=True), (97, 98), [ord(c) for c in "xyz"])
    orphans = Orphans(10.0, LETTERS.decode)
    orphans.add(u, now=0.0)
    later = GenerateChunk(request_id="r1", token_ids=(ord("w"),), text="w")
    assert orphans.hold("client:aa", later) and not orphans.hold("client:bb", later)
    out = orphans.resume("client:aa", ResumeRequest(received=1), now=1.0)
    assert [m for _, m in out] == [GenerateChunk(request_id="r1", token_ids=(ord("y"), ord("z")), text="yz"), later]
    assert orphans.resume("client:aa", ResumeRequest(received=1), now=1.0) == []  # a first scheduler: nothing
    orphans.add(u, now=0.0)
    assert orphans.expired(5.0) == [] and orphans.expired(11.0) == ["client:aa"]


def test_a_restarted_scheduler_tells_a_client_it_does_not_know_within_the_bound() -> None:
    orphans = Orphans(10.0, None, restarted_at=0.0)
    ((client, reply),) = orphans.resume("client:dd", ResumeRequest(received=0), now=1.0)
    assert client == "client:dd" and not reply.ok and reply.error == NOT_ADMITTED
    assert orphans.resume("client:dd", ResumeRequest(received=0), now=2.0) == []  # told once
    assert orphans.resume("client:ee", ResumeRequest(received=0), now=2.0, known=True) == []  # it has one here
    assert orphans.resume("client:ff", ResumeRequest(received=0), now=11.0) == []  # past the bound
