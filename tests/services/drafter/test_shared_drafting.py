"""The drafter drafts every request's fill and context in shared forwards; each request gets what it gets alone,
and a request with no share of the speculation budget drafts nothing."""

from __future__ import annotations

import pytest
import torch

from common.models.modeling import load_slice
from common.speculation.budget import SpeculationBudget
from common.speculation.drafting import ModelDrafters
from common.speculation.modes import DraftSettings
from common.wire.commands import EndRequest, Expand, Prune, StartRequest
from common.wire.ring import Phase, Segment
from services.drafter.core import DrafterCore
from tests.support.tiny_models import make_tiny_model

SETTINGS = DraftSettings(top_k=2, fill_nodes=6, fill_depth=3, expand_leaves=2, expand_nodes=3, grow_levels=1,
                         adaptive=False)
PROMPTS = {"a": (5, 9, 14, 3, 77, 21, 8), "b": (40, 41), "c": tuple((7 * i) % 300 + 3 for i in range(90))}
FIRST = {"a": 11, "b": 12, "c": 13}  # each request's first token, from a made-up verdict on its prompt


class CountingDrafters(ModelDrafters):
    """ModelDrafters that keep every drafter they hand out, to count the rows each forwarded."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.handed = []

    def take(self):
        drafter = super().take()
        self.handed.append(drafter)
        return drafter


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tiny = make_tiny_model(tmp_path_factory.mktemp("drafter") / "m", num_layers=2, hidden=64, seed=7)
    return load_slice(tiny, None, with_embedding=True, with_head=True, dtype=torch.float32, row_invariant=True)


def _started(model, ids, budget: SpeculationBudget | None = None) -> tuple[DrafterCore, CountingDrafters]:
    """Requests ``ids`` started and their first token verified (each round ended): the fills are due."""
    drafters = CountingDrafters(model)
    core = DrafterCore("drafter", drafters, hops=3, budget=budget)
    for rid in ids:
        core.handle(StartRequest(rid, 0, PROMPTS[rid], 50, draft=SETTINGS, mode="flowspec", prefill_chunk=256))
    for rid in ids:
        core.handle(Prune(rid, 1, 1, 1, (), (), (FIRST[rid],), FIRST[rid], known=0))
    return core, drafters


def _fill_of(sends, rid: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return [(m.tokens, m.parents) for _, m in sends if isinstance(m, Segment) and m.request_id == rid
            and m.phase is Phase.TREE]


def test_fills_drafted_together_equal_each_request_drafted_alone(model):
    solo = {}
    for rid in PROMPTS:
        core, _ = _started(model, [rid])
        assert core.handle(Expand(rid, 2, 1)) == [], "the fill waits for the next batch"
        solo[rid] = _fill_of(core.run_batch().sends, rid)
    core, _ = _started(model, list(PROMPTS))
    for rid in PROMPTS:
        core.handle(Expand(rid, 2, 1))
    batch = core.run_batch()
    assert not batch.failed
    for rid in PROMPTS:
        assert _fill_of(batch.sends, rid) == solo[rid] and len(solo[rid]) == 3, rid  # one segment per hop
    # Prompt and first token ride in each fill's first level: the 90-token context's first 64 with the others,
    # its rest alone, then one forward per deeper level for all three.
    assert [(f.requests, f.rows) for f in batch.forwards] == [(3, 64 + 8 + 3), (1, 27), (3, 6), (3, 6)]


def test_with_no_share_of_the_budget_requests_draft_nothing_and_send_their_root_alone(model):
    core, drafters = _started(model, list(PROMPTS), SpeculationBudget(128, max_in_flight=1))
    assert not core.batch_ready(), "no context pass: nothing will be drafted from it"
    for rid in PROMPTS:
        sent = core.handle(Expand(rid, 2, 1))
        assert _fill_of(sent, rid) == [((FIRST[rid],), (-1,))], "the root alone, at once, as ar sends it"
    assert not core.batch_ready() and core.run_batch().forwards == []
    assert all(d.rows_forwarded == 0 for d in drafters.handed)


def test_a_request_catches_up_on_its_context_once_it_speculates_again(model):
    core, drafters = _started(model, ["a", "b"], SpeculationBudget(128, max_in_flight=1))
    assert _fill_of(core.handle(Expand("a", 2, 1)), "a") == [((11,), (-1,))]  # the root alone: no draft forward
    core.handle(EndRequest("b", 2, "done"))  # b finishes: a is alone, within the budget again
    core.handle(Prune("a", 3, 2, 2, (0,), (), (21,), 21, known=1))  # a's root verified, its next token 21
    assert core.handle(Expand("a", 4, 2)) == [], "a speculates again: its fill waits for the batch"
    fill = _fill_of(core.run_batch().sends, "a")
    assert len(fill) == 3 and fill[0][0][0] == 21, "a fill from the new root, one segment per hop"
    assert drafters.handed[0].context_length == len(PROMPTS["a"]) + 2, "the prompt and both tokens caught up"
