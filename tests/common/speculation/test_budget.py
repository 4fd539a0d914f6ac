"""The speculation budget: an even share of the nodes in flight, within each tree's cap, never below the root."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.speculation.budget import DEFAULT_TOTAL_NODES, SpeculationBudget


@pytest.mark.parametrize(
    ("total", "in_flight", "node_cap", "share"),
    [
        (128, 1, 128, 128),  # alone: the tree's own cap
        (128, 4, 128, 32),
        (128, 8, 128, 16),
        (128, 3, 128, 42),
        (128, 2, 40, 40),  # the tree's cap binds first
        (8, 16, 128, 1),  # heavier load than the budget: the root alone, ar's work
        (1, 1, 128, 1),
    ],
)
def test_share(total: int, in_flight: int, node_cap: int, share: int) -> None:
    assert SpeculationBudget(total).share(in_flight, node_cap) == share


@pytest.mark.parametrize(
    ("in_flight", "fill_nodes", "expected"),
    [(1, 24, 24), (4, 24, 24), (8, 24, 15), (64, 24, 1), (128, 24, 0), (500, 24, 0)],
)
def test_fill_nodes_below_the_root(in_flight: int, fill_nodes: int, expected: int) -> None:
    assert SpeculationBudget().fill_nodes(in_flight, 128, fill_nodes) == expected


def test_one_request_alone_keeps_the_default_trees() -> None:
    assert DEFAULT_TOTAL_NODES >= 128 and SpeculationBudget().share(1, 128) == 128


@given(total=st.integers(1, 4096), in_flight=st.integers(1, 256), node_cap=st.integers(1, 512))
def test_shares_stay_within_the_budget_and_never_below_the_root(total: int, in_flight: int, node_cap: int) -> None:
    share = SpeculationBudget(total).share(in_flight, node_cap)
    assert 1 <= share <= node_cap
    assert share * in_flight <= total or share == 1  # over budget only by the roots themselves
    assert SpeculationBudget(total).share(in_flight + 1, node_cap) <= share  # more load, never a larger tree


@pytest.mark.parametrize(("total", "in_flight"), [(0, 1), (10, 0)])
def test_bad_arguments_are_refused(total: int, in_flight: int) -> None:
    with pytest.raises(ValueError):
        SpeculationBudget(total).share(in_flight, 128)


@pytest.mark.parametrize(("in_flight", "share"), [(1, 128), (2, 64), (3, 1), (16, 1)])
def test_beyond_max_in_flight_no_request_speculates(in_flight: int, share: int) -> None:
    budget = SpeculationBudget(128, max_in_flight=2)
    assert budget.share(in_flight, 128) == share
    assert (budget.fill_nodes(in_flight, 128, 24) == 0) == (share == 1)


def test_a_negative_max_in_flight_is_refused() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        SpeculationBudget(128, max_in_flight=-1)
