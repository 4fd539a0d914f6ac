"""The drafter drafts ahead of the verdicts: credits pace what it sends, prunes drop what it guessed wrong."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from common.speculation.budget import SpeculationBudget
from common.speculation.drafting import TreeShape
from common.speculation.fill import SoloContext, SoloFill
from common.speculation.growth import best_leaves
from common.speculation.modes import DraftSettings
from common.speculation.tree import DraftTree, single_root
from common.wire.commands import Expand, Prune, StartRequest
from common.wire.reports import DraftReport
from common.wire.ring import Segment
from services.drafter.core import DrafterCore

# One level per growth from the best leaf, two children kept: every step is predictable.
SETTINGS = DraftSettings(top_k=2, fill_nodes=4, fill_depth=2, expand_leaves=1, expand_nodes=2, grow_levels=1,
                         adaptive=False)


class ScriptedDrafter:
    """TreeDrafter's interface with made-up logits: child ``i`` of token ``t`` is ``10 t + i``, score ``-i``."""

    takes_features = False

    def __init__(self) -> None:
        self.context: list[int] = []
        self.forwards = 0

    def extend_context(self, tokens: Sequence[int]) -> None:
        self.context += tokens

    def draft(self, root: int, shape: TreeShape) -> DraftTree:
        tree = single_root(root)
        for _ in range(shape.depth):
            tree = self.grow_best(tree, shape.top_k, shape.top_k, shape.top_k)
        return DraftTree(tree.tokens[: shape.nodes + 1], tree.parents[: shape.nodes + 1], tree.scores[: shape.nodes + 1])

    def grow_best(self, tree: DraftTree, leaves: int, width: int, top_k: int, pending: Sequence[int] = ()) -> DraftTree:
        self.extend_context(pending)
        self.forwards += 1
        candidates = [(tree.scores[f] - i, 10 * tree.tokens[f] + i, f)
                      for f in best_leaves(tree, leaves) for i in range(1, top_k + 1)]
        best = sorted(candidates, key=lambda c: -c[0])[:width]
        return tree.appended([c[1] for c in best], [c[2] for c in best], [c[0] for c in best])


    def level_best(self, tree: DraftTree, leaves: int, width: int, top_k: int, pending: Sequence[int] = ()):
        return ScriptedLevel(self.grow_best(tree, leaves, width, top_k, pending))

    def fill(self, root: int, shape: TreeShape, pending: Sequence[int] = ()) -> SoloFill:
        return SoloFill(self, root, shape, pending)

    def context_step(self, tokens: Sequence[int]) -> SoloContext:
        return SoloContext(self, tokens)


class NoModel:
    """The SharedDraft of scripted levels: no rows, no logits."""

    def forward_many(self, parts: list) -> list[torch.Tensor]:
        raise AssertionError("scripted levels forward no rows")

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.zeros(hidden.shape[0], 1)

    def token_ids(self, rows: torch.Tensor) -> list[list[int]]:
        return rows.tolist()


class ScriptedLevel:
    """A LevelStep whose tree was made up at once."""

    shared = NoModel()
    top_k = 1

    def __init__(self, tree: DraftTree) -> None:
        self._tree = tree

    def rows(self) -> None:
        return None

    def take(self, hidden: torch.Tensor) -> None:
        raise AssertionError("scripted levels forward no rows")

    def frontier_hidden(self) -> torch.Tensor:
        return torch.zeros(0, 1)

    def finish(self, values: list[list[float]], tokens: list[list[int]]) -> DraftTree:
        return self._tree


class ScriptedDrafters:
    def __init__(self) -> None:
        self.drafter = ScriptedDrafter()

    def take(self) -> ScriptedDrafter:
        return self.drafter

    def give(self, drafter: ScriptedDrafter) -> None:
        pass


def _prune(epoch: int, accepted: tuple[int, ...], keep: tuple[int, ...], known: int, next_token: int) -> Prune:
    return Prune("r1", epoch, epoch, 1, accepted, keep, (next_token,), next_token, known=known)


def _drafter_in_round() -> tuple[DrafterCore, ScriptedDrafter, list]:
    """Prefilled, the fill sent, one growth sent at once and the next pre-drafted (not sent)."""
    drafters = ScriptedDrafters()
    core = DrafterCore("drafter", drafters, hops=3)
    core.handle(StartRequest("r1", 0, (1, 2, 3), 50, draft=SETTINGS, mode="flowspec"))
    core.work(core.next_work())  # the prompt into the draft cache while the base prefills
    core.handle(Prune("r1", 1, 1, 1, (), (), (10,), 10, known=0))
    sent = core.handle(Expand("r1", 2, 1))  # fill: 10 -> 101, 102; 101 -> 1011, 1012
    while (request_id := core.next_work()) is not None:
        sent += core.work(request_id)
    return core, drafters.drafter, sent


def _nodes(outs) -> list[int]:
    return [t for _, m in outs if isinstance(m, Segment) for t in m.tokens]


def test_a_fill_then_one_growth_go_out_and_the_next_growth_waits_for_a_credit():
    core, drafter, sent = _drafter_in_round()
    assert _nodes(sent) == [10, 101, 102, 1011, 1012, 1021, 1022]  # fill, then the children of best leaf 102
    assert [len(m.tokens) for _, m in sent if isinstance(m, Segment)] == [1, 2, 2, 2]  # one segment per hop, + 1
    assert core.requests["r1"].tree.tokens[7:] == (10111, 10112)  # pre-drafted under 1011, not sent
    assert drafter.context == [1, 2, 3, 10]


def test_every_report_leaves_before_its_segments():
    _, _, sent = _drafter_in_round()
    kinds = [type(m) for _, m in sent]
    assert kinds == [DraftReport, Segment, Segment, Segment, DraftReport, Segment]


def test_a_credit_sends_the_surviving_pre_drafted_nodes_without_drafting():
    core, drafter, _ = _drafter_in_round()
    forwards = drafter.forwards
    # Root verified, 101 is next: its subtree survives, the pre-drafted 10111, 10112 (unknown to the scheduler) too.
    core.handle(_prune(2, (0,), (1, 3, 4), known=7, next_token=101))
    outs = core.handle(Expand("r1", 4, 2))
    report, segment = outs[0][1], outs[1][1]
    assert isinstance(report, DraftReport) and (report.epoch, report.first) == (2, 3)
    assert (segment.tokens, segment.parents, segment.first) == ((10111, 10112), (1, 1), 3)
    assert drafter.forwards == forwards
    assert core.next_work() == "r1", "the next growth starts at once"


def test_pre_drafted_nodes_on_a_pruned_branch_are_dropped():
    core, drafter, _ = _drafter_in_round()
    core.handle(_prune(2, (0,), (2, 5, 6), known=7, next_token=102))  # 102 is next: 10111, 10112 hang off 1011
    assert core.requests["r1"].tree.tokens == (102, 1021, 1022)
    assert core.handle(Expand("r1", 4, 2)) == []  # nothing pre-drafted survived: nothing to send yet
    outs = core.work(core.next_work())
    assert _nodes(outs) == [10211, 10212]
    assert not {10111, 10112} & set(_nodes(outs))
    assert drafter.context[-1] == 102, "the committed tokens rode in that growth's forward"


def test_without_a_credit_nothing_is_sent_however_much_is_drafted():
    core, _, _ = _drafter_in_round()
    core.handle(_prune(2, (0,), (1, 3, 4), known=7, next_token=101))
    assert core.next_work() is None, "one growth ahead at most"
    assert core.work("r1") == []


def _fill_under_load(total_nodes: int, others: int) -> tuple[DrafterCore, list]:
    """r1's fill with ``others`` ar requests in flight beside it, under a budget of ``total_nodes``."""
    core = DrafterCore("drafter", ScriptedDrafters(), hops=3, budget=SpeculationBudget(total_nodes))
    for i in range(others):
        core.handle(StartRequest(f"ar{i}", 0, (1, 2), 50, draft=SETTINGS, mode="ar"))
    core.handle(StartRequest("r1", 0, (1, 2, 3), 50, draft=SETTINGS, mode="flowspec"))
    core.work(core.next_work())  # the prompt into the draft cache
    core.handle(Prune("r1", 1, 1, 1, (), (), (10,), 10, known=0))
    sent = core.handle(Expand("r1", 2, 1))  # the root alone at once, or a fill drafted at the next batch
    return core, sent + core.run_batch().sends


@pytest.mark.parametrize(
    ("total_nodes", "others", "fill"),
    [
        (128, 0, [10, 101, 102, 1011, 1012]),  # alone: the configured fill (4 nodes below the root)
        (128, 2, [10, 101, 102, 1011, 1012]),  # a share of 42 holds it
        (6, 2, [10, 101]),  # a share of 2 nodes: the root and its best child
        (2, 2, [10]),  # a share of 1: the root alone, ar's work
    ],
)
def test_a_fill_shrinks_to_the_request_share_of_the_budget(total_nodes, others, fill):
    core, sent = _fill_under_load(total_nodes, others)
    assert _nodes(sent) == fill
    if len(fill) < 5:  # the tree is at its share: nothing is drafted ahead until a prune makes room
        assert core.next_work() is None


class RecordingDrafters:
    """A ScriptedDrafter per request; ``extended`` records each context pass as (drafter number, tokens)."""

    def __init__(self) -> None:
        self.extended: list[tuple[int, int]] = []
        self.count = 0

    def take(self) -> ScriptedDrafter:
        drafter, number, log = ScriptedDrafter(), self.count, self.extended
        self.count += 1
        plain = drafter.extend_context

        def extend(tokens: Sequence[int]) -> None:
            if tokens:
                log.append((number, len(tokens)))
            plain(tokens)

        drafter.extend_context = extend  # type: ignore[method-assign]
        return drafter

    def give(self, drafter: ScriptedDrafter) -> None:
        pass


def test_a_long_prompt_enters_the_draft_cache_a_chunk_per_turn_between_other_requests():
    drafters = RecordingDrafters()
    core = DrafterCore("drafter", drafters, hops=3)
    long_prompt = tuple(range(3, 203))  # 200 tokens: 13 chunks of 16
    core.handle(StartRequest("long", 0, long_prompt, 8, draft=SETTINGS, mode="flowspec", prefill_chunk=16))
    core.handle(StartRequest("short", 0, (1, 2, 3), 8, draft=SETTINGS, mode="flowspec", prefill_chunk=16))
    core.work(core.next_work())
    core.work(core.next_work())  # one turn each
    assert sorted(drafters.extended) == [(0, 16), (1, 3)], "the long prompt took one chunk, not the whole prompt"
    core.handle(Prune("short", 1, 1, 1, (), (), (10,), 10, known=0))  # short's first token: its fill goes out
    fill = core.handle(Expand("short", 2, 1)) + core.work("short")  # drafted at short's next turn
    assert _nodes(fill)[:1] == [10], "short drafts while long's prompt is still going in"
    while (request_id := core.next_work()) is not None:
        core.work(request_id)
    passes = [n for d, n in drafters.extended if d == 0]
    assert sum(passes) == 200 and max(passes) == 16 and len(passes) == 13
