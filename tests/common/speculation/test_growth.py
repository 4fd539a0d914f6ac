"""grow_many: a draft level for several requests in one shared forward gives each the tree it gets alone."""

from __future__ import annotations

import pytest
import torch

from common.models.modeling import load_slice
from common.speculation.drafting import ModelDrafters, TreeShape
from common.speculation.growth import grow_many
from common.speculation.heads.context import HeadDrafters
from common.speculation.heads.model import new_head
from common.speculation.tree import single_root
from tests.support.tiny_models import make_tiny_model

PROMPTS = ([5, 9, 14, 3, 77, 21, 8], [40, 41], [100, 7, 7, 7, 62, 19, 200, 33, 12, 4, 90])
FILL = TreeShape(nodes=6, depth=3, top_k=2)
LEVELS = 3  # growth levels after the fill
LEAVES, WIDTH, TOP_K = 2, 3, 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("growth") / "m", num_layers=2, hidden=64, seed=4)


FEATURES = torch.randn(max(map(len, PROMPTS)), 64, generator=torch.Generator().manual_seed(0))  # base features


def _model_drafters(tiny, row_invariant: bool) -> ModelDrafters:
    model = load_slice(tiny, None, with_embedding=True, with_head=True, dtype=torch.float32,
                       row_invariant=row_invariant)
    return ModelDrafters(model)


def _head_drafters(tiny, row_invariant: bool) -> HeadDrafters:
    head = new_head(tiny, intermediate_size=48, draft_ids=None, dtype=torch.float32, seed=1).requires_grad_(False)
    head.use_row_invariant(row_invariant)
    return HeadDrafters(head)


def _started(drafters, prompt: list[int]):
    """A drafter with ``prompt`` committed (and, for a head, the base features of all but its last token) and a
    fill tree from its last token."""
    drafter = drafters.take()
    drafter.extend_context(prompt)
    if drafter.takes_features:
        drafter.add_features(0, FEATURES[: len(prompt) - 1])
    return drafter, drafter.draft(prompt[-1], FILL)


def _solo_trees(drafters) -> list:
    trees = []
    for prompt in PROMPTS:
        drafter, tree = _started(drafters, prompt)
        for _ in range(LEVELS):
            tree = drafter.grow_best(tree, LEAVES, WIDTH, TOP_K)
        trees.append(tree)
    return trees


def _batched_trees(drafters) -> tuple[list, list[tuple[int, int]]]:
    started = [_started(drafters, prompt) for prompt in PROMPTS]
    ours, trees = [d for d, _ in started], [t for _, t in started]
    forwards: list[tuple[int, int]] = []
    for _ in range(LEVELS):
        steps = [d.level_best(t, LEAVES, WIDTH, TOP_K) for d, t in zip(ours, trees, strict=True)]
        trees, ran = grow_many(steps[0].shared, steps)
        forwards += ran
    return trees, forwards


@pytest.mark.parametrize("kind", ["model", "head"])
def test_a_level_drafted_for_three_requests_at_once_equals_drafting_each_alone(tiny, kind):
    drafters = (_model_drafters if kind == "model" else _head_drafters)(tiny, row_invariant=True)
    solo = _solo_trees(drafters)
    together, forwards = _batched_trees(drafters)
    for alone, shared in zip(solo, together, strict=True):
        assert len(alone) == 1 + FILL.nodes + LEVELS * WIDTH, "every level grew the tree"
        assert shared.tokens == alone.tokens and shared.parents == alone.parents
        assert shared.scores == alone.scores  # bitwise: row-invariant numerics
    assert forwards[0] == (len(PROMPTS), len(PROMPTS) * LEAVES), "every request's leaves in the first forward"
    assert all(requests == len(PROMPTS) for requests, _ in forwards), "no request ran alone"


@pytest.mark.parametrize("kind", ["model", "head"])
def test_fused_numerics_share_the_forward_and_grow_every_tree(tiny, kind):
    drafters = (_model_drafters if kind == "model" else _head_drafters)(tiny, row_invariant=False)
    together, forwards = _batched_trees(drafters)
    assert all(len(tree) == 1 + FILL.nodes + LEVELS * WIDTH for tree in together)
    assert forwards and all(requests == len(PROMPTS) for requests, _ in forwards)


def test_committed_tokens_ride_in_the_shared_forward_as_they_do_alone(tiny):
    """A request whose round ended: its accepted token is committed in the same forward as the others' rows."""
    drafters = _model_drafters(tiny, row_invariant=True)

    def next_round(drafter, tree):  # the first child accepted, then a token the draft lacked: the new root
        child, bonus = tree.tokens[1], next(t for t in range(3, 300) if t not in tree.tokens)
        return single_root(bonus), [child, bonus]

    solo = []
    for prompt in PROMPTS:
        drafter, tree = _started(drafters, prompt)
        root, pending = next_round(drafter, tree)
        solo.append(drafter.grow_best(root, 1, WIDTH, TOP_K, pending))
    started = [_started(drafters, prompt) for prompt in PROMPTS]
    steps = [d.level_best(*next_round(d, t)[:1], 1, WIDTH, TOP_K, next_round(d, t)[1]) for d, t in started]
    together, forwards = grow_many(steps[0].shared, steps)
    assert together == solo
    assert forwards == [(len(PROMPTS), len(PROMPTS))], "each request's new root, one shared forward"
    assert all(d.context_length == len(p) + 2 for (d, _), p in zip(started, PROMPTS, strict=True))
