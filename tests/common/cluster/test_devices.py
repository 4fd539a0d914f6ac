"""One device per stage: spreading a local cluster's services over the devices given."""

from __future__ import annotations

import pytest

from common.cluster.devices import device_table, spread, spread_text
from common.cluster.settings import ClusterSpec, Placement
from common.models.devices import DeviceError


def spec(stages: int) -> ClusterSpec:
    return ClusterSpec(base="/b", draft="", device="cpu",
                       stages=tuple(Placement(f"stage-{i + 1}") for i in range(stages)))


def devices_of(s: ClusterSpec) -> list[str]:
    return [device for _, device in device_table(s)]


def test_one_device_per_stage_drafter_first_verifier_last():
    placed = spread(spec(4), ("cuda:0", "cuda:1", "cuda:2", "cuda:3"))
    assert devices_of(placed) == ["cuda:0", "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:3"]
    assert placed.device == "cuda:0"  # the bench's local baseline runs on the first device


def test_fewer_devices_than_stages_keeps_neighbours_together():
    assert devices_of(spread_text("cuda:0,cuda:1", spec(4))) == ["cuda:0", *["cuda:0"] * 2, *["cuda:1"] * 2, "cuda:1"]
    assert devices_of(spread_text("cuda:1", spec(2))) == ["cuda:1"] * 4


def test_more_devices_than_stages_is_refused():
    with pytest.raises(DeviceError, match="3 devices for 2 stage"):
        spread(spec(2), ("cuda:0", "cuda:1", "cuda:2"))


def test_placement_devices_survive_the_cluster_file():
    placed = spread_text("cuda:0,cuda:1", spec(2))
    again = ClusterSpec.from_json(placed.to_json())
    assert again == placed and again.device_of("stage-2") == "cuda:1"
    assert ClusterSpec.from_json(spec(2).to_json()).device_of("verifier") == "cpu"  # no own device: the cluster's


def test_determinism_is_on_unless_the_cluster_file_turns_it_off():
    import dataclasses

    assert spec(1).deterministic
    off = dataclasses.replace(spec(1), deterministic=False)
    assert not ClusterSpec.from_json(off.to_json()).deterministic
