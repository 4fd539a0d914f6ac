"""The default decoding mode follows the machine: overlap needs cores of its own per ring service."""

from __future__ import annotations

import pytest

from common.cluster.machine_defaults import (
    SHARED_CORES_TOTAL_NODES,
    choose_budget,
    choose_mode,
    thread_environment,
)
from common.speculation.budget import SpeculationBudget


@pytest.mark.parametrize(
    "cores, stages, mode",
    [(2, 1, "ar"), (4, 1, "ar"), (6, 1, "flowspec"), (8, 2, "flowspec"), (11, 4, "ar"), (12, 4, "flowspec")],
)
def test_mode_by_cores_per_ring_service(cores, stages, mode):
    choice = choose_mode(cores, stages)
    assert choice.mode == mode and str(cores) in choice.reason


def test_services_sharing_cores_get_sleeping_openmp_threads_unless_pinned_or_chosen():
    assert thread_environment(pinned=False, environ={}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert thread_environment(pinned=True, environ={}) == {}
    assert thread_environment(pinned=False, environ={"OMP_WAIT_POLICY": "ACTIVE"}) == {}


def test_where_tree_rows_cost_what_they_save_ar_stays_the_default():
    """Measured row cost over 3 tokens x stages: ar, and the reason says the cost; under it: flowspec."""
    dear = choose_mode(12, 1, row_cost=lambda: 9.4)
    assert dear.mode == "ar" and "9.4 one-row forwards" in dear.reason and "12 cores" in dear.reason
    assert choose_mode(12, 1, row_cost=lambda: 2.0).mode == "flowspec"
    assert choose_mode(12, 4, row_cost=lambda: 9.4).mode == "flowspec"  # four stages at once: 9.4 < 3 x 4
    assert choose_mode(12, 4, row_cost=lambda: 12.5).mode == "ar"


def test_the_row_cost_is_measured_only_where_the_cores_would_allow_speculation():
    def never() -> float:
        raise AssertionError("measured on a machine whose cores decide alone")

    assert choose_mode(2, 1, row_cost=never).mode == "ar"


@pytest.mark.parametrize("cores, stages, drafter, total", [(2, 2, "model", SHARED_CORES_TOTAL_NODES),
                                                           (2, 1, "head", SHARED_CORES_TOTAL_NODES),
                                                           (8, 2, "model", 128), (12, 4, "model", 128)])
def test_services_sharing_cores_do_not_speculate_and_others_keep_the_default_budget(cores, stages, drafter, total):
    choice = choose_budget(cores, stages, drafter)
    assert choice.total_nodes == total and choice.max_in_flight == 0 and str(cores) in choice.reason
    assert (SpeculationBudget(choice.total_nodes).fill_nodes(1, 128, 24) == 0) == (total == SHARED_CORES_TOTAL_NODES)


def test_where_tree_rows_cost_what_they_save_no_request_speculates_by_default():
    dear = choose_budget(12, 1, row_cost=lambda: 9.4)
    assert dear.total_nodes == SHARED_CORES_TOTAL_NODES and "9.4 one-row forwards" in dear.reason
    assert choose_budget(12, 1, row_cost=lambda: 2.0).total_nodes == 128
