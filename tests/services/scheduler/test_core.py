"""The scheduler decides every verdict at once: late draft reports are brought forward, never waited for."""

from __future__ import annotations

import pytest

from common.speculation.modes import DraftSettings
from common.wire.client import GenerateRequest
from common.wire.commands import Expand, Prune
from common.wire.ordering import OrderError
from common.wire.reports import DraftReport, Verdict
from services.scheduler.core import SchedulerCore

SERVICES = ["drafter", "stage-1", "verifier"]
# The fill tree of round 1 (numbering of epoch 1): 0:root(10) -> 1:(11) -> 2:(12); 0 -> 3:(13); 1 -> 4:(14)
FILL = DraftReport("r1", epoch=1, first=0, tokens=(10, 11, 12, 13, 14), parents=(-1, 0, 1, 0, 1), segments_sent=2,
                   draft_ms=1.0)


def _running() -> SchedulerCore:
    """A flowspec request past its prefill verdict: round 1, epoch 1, tree still unreported."""
    core = SchedulerCore(SERVICES, None, [0], DraftSettings())
    core.submit("client:c", GenerateRequest(prompt="", prompt_ids=(1, 2, 3), max_new_tokens=50, mode="flowspec"))
    core.handle(Verdict("r1", seq=0, epoch=0, round=0, kind="prefill", next_token=10))
    return core


def _tree(core: SchedulerCore) -> tuple[tuple[int, ...], tuple[int, ...]]:
    job = core.jobs["r1"]
    return job.tree.tokens, job.tree.parents


def _prunes(outs) -> list[Prune]:
    return [m for d, m in outs if isinstance(m, Prune) and d == "drafter"]


def test_a_verdict_is_decided_while_a_later_report_is_outstanding():
    core = _running()
    core.handle(FILL)
    # Nodes 5.. (a growth from node 2) were sent but their report is still in flight.
    outs = core.handle(Verdict("r1", seq=1, epoch=1, round=1, kind="tree", accepted=(0, 1), accepted_tokens=(10, 11),
                               next_token=12, rows=2))
    (prune,) = _prunes(outs)
    assert (prune.epoch, prune.keep, prune.known) == (2, (2,), 5)  # decided over the 5 nodes it knows
    assert any(isinstance(m, Expand) for _, m in outs)
    assert _tree(core) == ((12,), (-1,))


def test_a_report_of_an_older_epoch_is_brought_forward():
    core = _running()
    core.handle(FILL)
    core.handle(Verdict("r1", seq=1, epoch=1, round=1, kind="tree", accepted=(0, 1), accepted_tokens=(10, 11),
                        next_token=12, rows=2))
    # Drafted at epoch 1 before that prune: 5:(15) under 2 (survives, 2 is the new root), 6:(16) under 3 (pruned),
    # 7:(17) under 5 (survives with its parent).
    late = DraftReport("r1", epoch=1, first=5, tokens=(15, 16, 17), parents=(2, 3, 5), segments_sent=1, draft_ms=1.0)
    assert core.handle(late) == []
    assert _tree(core) == ((12, 15, 17), (-1, 0, 1))


def test_a_late_report_whose_nodes_were_all_pruned_adds_nothing():
    core = _running()
    core.handle(FILL)
    core.handle(Verdict("r1", seq=1, epoch=1, round=1, kind="tree", accepted=(0, 1), accepted_tokens=(10, 11),
                        next_token=12, rows=2))
    core.handle(DraftReport("r1", epoch=1, first=5, tokens=(16,), parents=(3,), segments_sent=1, draft_ms=1.0))
    assert _tree(core) == ((12,), (-1,))


def test_a_verdict_over_unreported_nodes_waits_for_that_report_only():
    core = _running()
    # The fill's first segment overtook the fill's report: its verdict waits, nothing else does.
    verdict = Verdict("r1", seq=1, epoch=1, round=1, kind="tree", accepted=(0, 1), accepted_tokens=(10, 11),
                      next_token=12, rows=2)
    assert core.handle(verdict) == []
    outs = core.handle(FILL)
    (prune,) = _prunes(outs)
    assert prune.keep == (2,)


def test_a_report_ahead_of_the_scheduler_is_an_order_error():
    core = _running()
    with pytest.raises(OrderError):
        core.handle(DraftReport("r1", epoch=5, first=0, tokens=(10,), parents=(-1,), segments_sent=1, draft_ms=0.0))


def test_a_report_that_does_not_continue_the_tree_is_an_order_error():
    core = _running()
    core.handle(FILL)
    with pytest.raises(OrderError):
        core.handle(DraftReport("r1", epoch=1, first=9, tokens=(10,), parents=(0,), segments_sent=1, draft_ms=0.0))
