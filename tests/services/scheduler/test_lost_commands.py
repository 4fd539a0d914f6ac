"""A gap in a service's command stream fails exactly the requests whose commands were lost."""

from __future__ import annotations

from common.speculation.modes import DraftSettings
from common.wire.client import GenerateReply, GenerateRequest
from common.wire.commands import EndRequest, StartRequest
from common.wire.reports import Fault, Verdict
from services.scheduler.commands import CommandLog
from services.scheduler.core import SchedulerCore

SERVICES = ["drafter", "stage-1", "verifier"]


def _three_running() -> tuple[SchedulerCore, dict[str, int]]:
    """r1, r2, r3 in the ring; the cmd_seq each one's StartRequest got on stage-1."""
    core = SchedulerCore(SERVICES, None, [0], DraftSettings())
    starts: dict[str, int] = {}
    for client in ("a", "b", "c"):
        outs = core.submit(f"client:{client}", GenerateRequest(prompt="", prompt_ids=(1, 2, 3), max_new_tokens=50,
                                                               mode="flowspec"))
        for dest, msg in outs:
            if dest == "stage-1" and isinstance(msg, StartRequest):
                starts[msg.request_id] = msg.cmd_seq
    for rid in starts:
        core.handle(Verdict(rid, seq=0, epoch=0, round=0, kind="prefill", next_token=10))
    return core, starts


def test_the_lost_commands_request_fails_and_no_other():
    core, starts = _three_running()
    lost = starts["r2"]
    outs = core.handle(Fault("stage-1", "", f"stage-1: commands #{lost}..#{lost} lost", lost=(lost, lost)))
    replies = [(dest, msg) for dest, msg in outs if isinstance(msg, GenerateReply)]
    assert [(d, m.ok) for d, m in replies] == [("client:b", False)]
    assert "lost" in replies[0][1].error
    ended = {m.request_id for _, m in outs if isinstance(m, EndRequest)}
    assert ended == {"r2"}
    assert set(core.running) == {"r1", "r3"}


def test_a_gap_over_several_requests_fails_each_once():
    core, starts = _three_running()
    first, last = starts["r1"], starts["r2"]
    outs = core.handle(Fault("stage-1", "", "lost", lost=(first, last)))
    failed = [d for d, m in outs if isinstance(m, GenerateReply)]
    assert failed == ["client:a", "client:b"] and core.running == ("r3",)


def test_the_command_log_forgets_numbers_past_its_bound():
    book = CommandLog(["s"])
    for i in range(CommandLog.KEEP + 10):
        book.next("s", f"r{i}")
    assert book.owners("s", 0, 5) == []
    assert book.owners("s", CommandLog.KEEP + 8, CommandLog.KEEP + 20) == [f"r{CommandLog.KEEP + 8}",
                                                                          f"r{CommandLog.KEEP + 9}"]
