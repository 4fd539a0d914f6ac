"""Admission: validation, KV estimate, and the scheduler's start / queue / busy decisions."""

from __future__ import annotations

import math

import pytest

from common.cluster.settings import Admission
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateReply, GenerateRequest
from common.wire.commands import EndRequest, StartRequest
from services.scheduler.admission import Capacity, busy_reason, invalid_reason, kv_need_bytes, tree_nodes
from services.scheduler.core import SchedulerCore

SERVICES = ["drafter", "stage-1", "verifier"]
CAP = Capacity(context_tokens=100, kv_bytes_per_token=1024)


def _request(**fields) -> GenerateRequest:
    return GenerateRequest(**{"prompt": "", "prompt_ids": (5, 6, 7), "max_new_tokens": 8, **fields})


@pytest.mark.parametrize(("fields", "prompt_tokens", "words"), [
    ({}, 0, "empty prompt"),
    ({"temperature": -0.5}, 3, "temperature"),
    ({"temperature": math.nan}, 3, "temperature"),
    ({"temperature": math.inf}, 3, "temperature"),
    ({"max_new_tokens": 0}, 3, "max_new_tokens must be at least 1"),
    ({"mode": "beam"}, 3, "mode 'beam'"),
    ({}, 100, "prompt of 100 tokens does not fit"),
    ({"max_new_tokens": 98}, 3, "exceeds the model's context of 100"),
])
def test_invalid_requests_get_one_clear_reason(fields, prompt_tokens, words):
    assert words in invalid_reason(_request(**fields), prompt_tokens, CAP)


def test_a_valid_request_has_no_reason():
    assert invalid_reason(_request(max_new_tokens=97), 3, CAP) == ""
    assert invalid_reason(_request(max_new_tokens=10**6), 3, Capacity()) == "", "context 0: unchecked"


def test_kv_need_counts_prompt_output_and_tree_rows():
    draft = DraftSettings()
    assert kv_need_bytes(10, 20, draft, CAP) == (30 + tree_nodes(draft)) * 1024


def test_busy_reason_says_what_and_when():
    assert busy_reason(4, 16, 2.0) == "busy: 4 requests in flight and 16 queued, retry after 2 s"


def _core(**admission) -> SchedulerCore:
    return SchedulerCore(SERVICES, None, [0], DraftSettings(), admission=Admission(**admission), capacity=CAP)


def _starts(outs) -> list[str]:
    return [m.request_id for d, m in outs if isinstance(m, StartRequest) and d == "drafter"]


def _replies(outs) -> list[tuple[str, GenerateReply]]:
    return [(d, m) for d, m in outs if isinstance(m, GenerateReply)]


def test_requests_start_up_to_the_limit_then_queue_then_busy():
    core = _core(max_in_flight=2, max_queued=1, retry_after_s=3.0)
    assert _starts(core.submit("client:a", _request())) == ["r1"]
    assert _starts(core.submit("client:b", _request())) == ["r2"]
    assert core.submit("client:c", _request()) == [] and core.queued == 1
    ((dest, reply),) = _replies(core.submit("client:d", _request()))
    assert dest == "client:d" and reply.code == "busy" and reply.retry_after_s == 3.0
    assert reply.error == "busy: 2 requests in flight and 1 queued, retry after 3 s"


def test_an_invalid_request_is_answered_at_once_and_strands_nobody():
    core = _core(max_in_flight=1)
    core.submit("client:a", _request())
    ((dest, reply),) = _replies(core.submit("client:bad", _request(prompt_ids=(), prompt="")))
    assert dest == "client:bad" and reply.code == "invalid" and "empty prompt" in reply.error
    assert core.submit("client:c", _request()) == [] and core.queued == 1, "the valid one waits its turn"
    outs = core.cancel("client:a")
    assert _starts(outs) == ["r2"], "the queued valid request starts when the slot frees"


def test_kv_budget_holds_a_request_back_until_memory_frees():
    need = kv_need_bytes(3, 8, DraftSettings(), CAP)
    core = _core(max_in_flight=4, kv_budget_mib=1.5 * need / (1 << 20))
    assert _starts(core.submit("client:a", _request())) == ["r1"]
    assert _starts(core.submit("client:b", _request())) == [], "two would exceed the KV budget"
    assert _starts(core.cancel("client:a")) == ["r2"]


def test_a_request_larger_than_the_whole_kv_budget_is_invalid():
    core = _core(kv_budget_mib=0.001)
    ((_, reply),) = _replies(core.submit("client:a", _request()))
    assert reply.code == "invalid" and "KV cache" in reply.error


def test_cancel_ends_the_request_on_every_service_with_consistent_command_numbers():
    core = _core()
    starts = core.submit("client:a", _request())
    outs = core.cancel("client:a")
    ends = {d: m for d, m in outs if isinstance(m, EndRequest)}
    assert set(ends) == set(SERVICES) and all(m.reason == "cancelled" for m in ends.values())
    assert all(ends[d].cmd_seq == m.cmd_seq + 1 for d, m in starts), "one command counter per service"
    assert [r.code for _, r in _replies(outs)] == ["cancelled"]
    assert core.jobs == {}


def test_each_request_has_its_own_deadline_from_its_submission():
    core = _core(max_in_flight=1)
    core.submit("client:a", _request())
    core.submit("client:b", _request())
    first = core.jobs["r1"].submitted
    core.waiting[0].submitted = first + 5.0  # b submitted 5 s after a, then queued behind it
    outs = core.expire(first + 11.0, timeout_s=10.0)
    assert [(d, r.code) for d, r in _replies(outs)] == [("client:a", "timeout")]
    assert "after its submission" in _replies(outs)[0][1].error
    assert _starts(outs) == ["r2"]
    assert core.expire(first + 14.0, timeout_s=10.0) == [], "b's deadline: 10 s from its submission"
    assert [(d, r.code) for d, r in _replies(core.expire(first + 15.5, timeout_s=10.0))] == [("client:b", "timeout")]


def test_a_request_queued_past_its_deadline_times_out_without_starting():
    core = _core(max_in_flight=1)
    core.submit("client:a", _request())
    core.submit("client:b", _request())
    assert core.queued == 1
    outs = core.expire(core.waiting[0].submitted + 10.5, timeout_s=10.0)
    assert sorted((d, r.code) for d, r in _replies(outs)) == [("client:a", "timeout"), ("client:b", "timeout")]
    assert "still queued" in dict(_replies(outs))["client:b"].error
    assert _starts(outs) == [] and core.queued == 0 and core.jobs == {}, "b never entered the ring"


def test_the_operators_prompt_cap_refuses_longer_prompts_in_one_line():
    core = _core(max_prompt_tokens=3)
    assert _starts(core.submit("client:a", _request(prompt_ids=(5, 6, 7)))) == ["r1"]
    ((client, reply),) = _replies(core.submit("client:b", _request(prompt_ids=(5, 6, 7, 8))))
    assert client == "client:b" and reply.code == "invalid" and "\n" not in reply.error
    assert reply.error == "prompt of 4 tokens exceeds this cluster's limit of 3 tokens (max_prompt_tokens)"


def test_up_sets_the_prompt_cap_and_the_deadline(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from services.cli import cluster
    from services.cli.main import app

    seen = {}
    monkeypatch.setattr(cluster, "_up_local", lambda *args, **options: seen.update(options))
    result = CliRunner().invoke(app, ["up", "--model", "smollm2", "--max-prompt-tokens", "2048",
                                      "--request-timeout", "120", "--run-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (seen["max_prompt_tokens"], seen["request_timeout"]) == (2048, 120.0)
