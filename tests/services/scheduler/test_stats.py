"""Time to first token and latency count from submission: a request's time in the queue is included."""

from __future__ import annotations

import time

from common.cluster.settings import Admission
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateReply, GenerateRequest
from common.wire.reports import StageStats, Verdict
from services.scheduler.core import SchedulerCore

SERVICES = ["drafter", "stage-1", "verifier"]
EOS = 0
QUEUED_S = 0.2


def test_ttft_and_latency_include_the_wait_in_the_queue():
    core = SchedulerCore(SERVICES, None, [EOS], DraftSettings(), admission=Admission(max_in_flight=1))
    request = GenerateRequest(prompt="", prompt_ids=(1, 2, 3), max_new_tokens=8, mode="ar")
    core.submit("client:a", request)
    core.submit("client:b", request)  # queued behind r1
    time.sleep(QUEUED_S)
    core.cancel("client:a")  # r2 enters the ring now
    core.handle(Verdict("r2", seq=0, epoch=0, round=0, kind="prefill", next_token=EOS))
    outs = []
    for name in SERVICES:
        outs += core.handle(StageStats(name, "r2", 1.0, 1, 1))
    (reply,) = [m for d, m in outs if isinstance(m, GenerateReply) and d == "client:b"]
    stats = reply.stats
    assert reply.ok and stats["queue_ms"] >= QUEUED_S * 1e3
    assert stats["ttft_ms"] >= stats["queue_ms"] + stats["prefill_ms"] - 1e-6
    assert stats["latency_ms"] >= stats["queue_ms"] + stats["wall_ms"] - 1e-6
    assert stats["prefill_ms"] < QUEUED_S * 1e3, "ring time alone leaves the queue out"
