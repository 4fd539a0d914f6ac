"""The default decoding mode follows the machine: overlap needs cores of its own per ring service."""

from __future__ import annotations

import pytest

from common.cluster.machine_defaults import (
    SHARED_CORES_MAX_IN_FLIGHT,
    choose_budget,
    choose_mode,
    thread_environment,
)


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


@pytest.mark.parametrize("cores, stages, drafter, limit", [(2, 2, "model", SHARED_CORES_MAX_IN_FLIGHT),
                                                           (2, 1, "head", SHARED_CORES_MAX_IN_FLIGHT),
                                                           (8, 2, "model", 0), (12, 4, "model", 0)])
def test_services_sharing_cores_stop_speculating_under_load_and_others_never_do(cores, stages, drafter, limit):
    choice = choose_budget(cores, stages, drafter)
    assert choice.max_in_flight == limit and choice.total_nodes == 128 and str(cores) in choice.reason
