"""TreeMask: the vectorised ancestor-or-self rows equal the tree's closure, through appends and prunes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.speculation.tree import ancestor_sets, plan_prune, prune_tree
from common.speculation.tree_mask import TreeMask
from tests.common.speculation.strategies import next_tokens, root_paths, trees


def closure(parents) -> torch.Tensor:
    sets = ancestor_sets(parents)
    out = torch.zeros(len(parents), len(parents), dtype=torch.bool)
    for i, s in enumerate(sets):
        out[i, sorted(s)] = True
    return out


def append_in_segments(mask: TreeMask, parents, cuts) -> None:
    start = 0
    for end in [*cuts, len(parents)]:
        if end > start:
            rows = mask.append(parents[start:end])
            assert rows.shape == (end - start, end)
            start = end


@settings(max_examples=200, deadline=None)
@given(data=st.data(), tree=trees(max_nodes=40, score_ordered=True))
def test_rows_equal_ancestor_closure_whatever_the_segment_cuts(data, tree):
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(tree) - 1, 1)), max_size=6)))
    mask = TreeMask(capacity=4)  # small, so growth happens too
    append_in_segments(mask, list(tree.parents), cuts)
    assert mask.size == len(tree)
    assert torch.equal(mask.rows(0, len(tree)), closure(tree.parents))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), tree=trees(min_nodes=2, max_nodes=30, score_ordered=True))
def test_keep_after_a_prune_equals_the_pruned_trees_closure(data, tree):
    path = data.draw(root_paths(tree))
    keep = plan_prune(tree, path, data.draw(next_tokens(tree, path[-1])))
    mask = TreeMask()
    mask.append(list(tree.parents))
    mask.keep(list(keep))
    if keep:
        assert torch.equal(mask.rows(0, len(keep)), closure(prune_tree(tree, keep).parents))
    assert mask.size == len(keep)


def test_a_parent_after_its_node_is_rejected():
    mask = TreeMask()
    mask.append([-1])
    with pytest.raises(ValueError, match="precede"):
        mask.append([0, 2])
