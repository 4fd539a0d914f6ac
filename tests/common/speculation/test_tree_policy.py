"""The adaptive tree shape: deeper when whole paths are accepted, wider when the tree misses, within the cap."""

from __future__ import annotations

import pytest

from common.speculation.tree_policy import MAX_LEVELS, Acceptance, GrowthShape, growth_shape, observe

BASE = GrowthShape(levels=3, leaves=4, width=12)


def _shape(acc: Acceptance, depth_ahead: int = 100, tree_nodes: int = 0, node_cap: int = 1000, hops: int = 3):
    return growth_shape(acc, BASE, hops, depth_ahead, tree_nodes, node_cap)


def test_observe_moves_each_average_towards_the_latest_verification():
    acc = observe(Acceptance(accepted=1.0, full=0.5, miss=0.5), accepted=4, full=True, continued=True)
    assert acc.accepted > 1.0 and acc.full > 0.5 and acc.miss < 0.5


def test_whole_paths_accepted_grow_deeper():
    shallow = _shape(Acceptance(accepted=2.0, full=0.0, miss=0.2))
    deep = _shape(Acceptance(accepted=2.0, full=0.9, miss=0.2))
    assert deep.levels == shallow.levels + 1


def test_more_accepted_tokens_grow_more_levels_up_to_the_limit():
    assert _shape(Acceptance(accepted=1.0, full=0.0, miss=0.0)).levels == 2
    assert _shape(Acceptance(accepted=3.0, full=0.0, miss=0.0)).levels == 4
    assert _shape(Acceptance(accepted=20.0, full=1.0, miss=0.0)).levels == MAX_LEVELS


def test_misses_grow_wider():
    narrow = _shape(Acceptance(accepted=1.0, full=0.0, miss=0.0))
    wide = _shape(Acceptance(accepted=1.0, full=0.0, miss=1.0))
    assert (narrow.width, narrow.leaves) == (6, 2)
    assert (wide.width, wide.leaves) == (18, 6)


def test_a_tree_shallower_than_the_pipeline_holds_grows_a_level_more():
    acc = Acceptance(accepted=1.0, full=0.0, miss=0.0)  # two levels consumed per verification
    assert _shape(acc, depth_ahead=5, hops=3).levels == _shape(acc, depth_ahead=6, hops=3).levels + 1
    assert _shape(acc, depth_ahead=6, hops=4).levels == _shape(acc, depth_ahead=6, hops=3).levels + 1


@pytest.mark.parametrize(("tree_nodes", "expected"), [
    (90, GrowthShape(levels=1, leaves=2, width=6)),  # room for one level of 6 only
    (95, GrowthShape(levels=1, leaves=2, width=5)),  # less than a level: what fits
    (100, None),  # full
])
def test_the_node_cap_bounds_a_growth(tree_nodes, expected):
    assert _shape(Acceptance(accepted=3.0, full=1.0, miss=0.0), tree_nodes=tree_nodes, node_cap=100) == expected


def test_a_growth_never_exceeds_the_cap():
    for nodes in range(0, 130, 7):
        for miss in (0.0, 0.5, 1.0):
            shape = _shape(Acceptance(accepted=2.0, full=1.0, miss=miss), tree_nodes=nodes, node_cap=128)
            assert shape is None or nodes + shape.levels * shape.width <= 128
