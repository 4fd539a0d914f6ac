"""Fills and context passes of several requests in shared forwards give each the tree and cache it gets alone."""

from __future__ import annotations

import pytest
import torch

from common.models.modeling import load_slice
from common.speculation.drafting import ModelDrafters, TreeShape
from common.speculation.fill import extend_many
from common.speculation.growth import grow_many
from common.speculation.tree import single_root
from tests.support.tiny_models import make_tiny_model

# The third prompt is longer than a context chunk (64 tokens): its first chunks go in forwards of their own.
PROMPTS = ([5, 9, 14, 3, 77, 21, 8], [40, 41], [(7 * i) % 300 + 3 for i in range(150)])
FILL = TreeShape(nodes=6, depth=3, top_k=2)


@pytest.fixture(scope="module")
def drafters(tmp_path_factory):
    tiny = make_tiny_model(tmp_path_factory.mktemp("fill") / "m", num_layers=2, hidden=64, seed=5)
    model = load_slice(tiny, None, with_embedding=True, with_head=True, dtype=torch.float32, row_invariant=True)
    return ModelDrafters(model)


def _batched_fills(drafters, prompts) -> tuple[list, list, list[tuple[int, int]]]:
    ours = [drafters.take() for _ in prompts]
    fills = [d.fill(p[-1], FILL, p) for d, p in zip(ours, prompts, strict=True)]
    forwards: list[tuple[int, int]] = []
    while steps := [step for fill in fills if (step := fill.level()) is not None]:
        _, ran = grow_many(steps[0].shared, steps)
        forwards += ran
    return ours, [fill.tree for fill in fills], forwards


def test_fills_drafted_together_equal_each_fill_drafted_alone(drafters):
    solo = []
    for prompt in PROMPTS:
        drafter = drafters.take()
        drafter.extend_context(prompt)
        solo.append((drafter, drafter.draft(prompt[-1], FILL)))
    ours, trees, forwards = _batched_fills(drafters, PROMPTS)
    for (alone, tree), drafter, shared in zip(solo, ours, trees, strict=True):
        assert len(tree) == 1 + FILL.nodes
        assert (shared.tokens, shared.parents) == (tree.tokens, tree.parents)
        assert shared.scores == tree.scores  # bitwise: row-invariant numerics
        assert (drafter.context_length, drafter.tree_rows) == (alone.context_length, alone.tree_rows)
    # Every request's first chunk in one forward, the long prompt's other two alone, then one forward per deeper
    # level for all three (two frontier rows each).
    assert forwards == [(3, 7 + 2 + 64), (1, 64), (1, 22), (3, 3 * 2), (3, 3 * 2)]


def test_a_fill_then_growth_continues_as_it_does_alone(drafters):
    """The fill leaves the cache as ``draft`` does: the next growth from its best leaves is the same."""
    alone = drafters.take()
    alone.extend_context(PROMPTS[0])
    expected = alone.grow_best(alone.draft(PROMPTS[0][-1], FILL), 2, 3, 2)
    ours, trees, _ = _batched_fills(drafters, PROMPTS[:2])
    assert ours[0].grow_best(trees[0], 2, 3, 2) == expected


def test_context_passes_of_several_requests_share_forwards(drafters):
    solo, ours = [drafters.take() for _ in PROMPTS], [drafters.take() for _ in PROMPTS]
    for drafter, prompt in zip(solo, PROMPTS, strict=True):
        drafter.extend_context(prompt)
    steps = [d.context_step(p) for d, p in zip(ours, PROMPTS, strict=True)]
    forwards = extend_many(steps[0].shared, steps)
    assert forwards == [(3, 64 + 7 + 2), (1, 64), (1, 22)]
    for alone, drafter, prompt in zip(solo, ours, PROMPTS, strict=True):
        assert drafter.context_length == len(prompt)
        root = single_root(prompt[-1])
        assert drafter.grow_best(root, 1, 3, 2) == alone.grow_best(root, 1, 3, 2)
