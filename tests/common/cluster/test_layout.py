"""Layout from an inventory: layer ranges, memory per board, ports and addresses."""

from __future__ import annotations

import pytest

from common.cluster.inventory import InventoryError, load_inventory
from common.cluster.layout import (
    board_bytes,
    cluster_spec,
    layer_ranges,
    memory_problems,
    ports_of,
    service_bytes,
)
from common.cluster.partition import MIB, PartitionError, costs_from_shapes
from tests.common.cluster.test_inventory import EXAMPLE

LAYERS = 12


def costs(layers: int = LAYERS, hidden: int = 256):
    shapes = {"model.embed_tokens.weight": (1000, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = (hidden, hidden)
    return costs_from_shapes(shapes, layers, 2, 64)


def test_auto_split_covers_every_layer_on_the_stage_boards():
    inv = load_inventory(EXAMPLE)
    ranges = layer_ranges(inv, costs(), costs(4))
    assert len(ranges) == 3 and ranges[0][0] == 0 and ranges[-1][1] == LAYERS
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert ranges == [(0, 4), (4, 8), (8, 12)]  # equal boards, equal speeds


def test_auto_split_weighs_board_speed():
    inv = load_inventory(EXAMPLE)
    boards = tuple(b if b.name != "board-2" else type(b)(**{**b.__dict__, "cores": 8}) for b in inv.boards)
    faster = type(inv)(**{**inv.__dict__, "boards": boards})
    first = layer_ranges(faster, costs(), costs(4))[0]
    assert first[1] - first[0] > LAYERS // 3


def test_explicit_ranges_must_match_the_stage_count():
    inv = load_inventory(EXAMPLE)
    explicit = type(inv)(**{**inv.__dict__, "layers": "0-6,6-12"})
    with pytest.raises(InventoryError, match="2 ranges for 3 stages"):
        layer_ranges(explicit, costs(), costs(4))


def test_a_board_too_small_for_its_other_services_cannot_take_a_stage():
    inv = load_inventory(EXAMPLE)
    crowded = type(inv)(**{**inv.__dict__, "drafter": "board-2"})
    small = tuple(b if b.name != "board-2" else type(b)(**{**b.__dict__, "memory_mib": 300}) for b in inv.boards)
    with pytest.raises(PartitionError, match="board board-2"):
        layer_ranges(type(crowded)(**{**crowded.__dict__, "boards": small}), costs(), costs(4))


def test_memory_is_summed_per_board_and_overruns_named():
    inv = load_inventory(EXAMPLE)
    base, draft = costs(), costs(4)
    needs = service_bytes(inv, [(0, 4), (4, 8), (8, 12)], base, draft)
    totals = board_bytes(inv, needs)
    assert totals["board-1"] == needs["scheduler"] + needs["drafter"]
    assert needs["stage-1"] - needs["stage-2"] == base.embedding_bytes
    assert memory_problems(inv, totals) == []
    tiny = type(inv)(**{**inv.__dict__, "overhead_mib": 2048.0})
    lines = memory_problems(tiny, board_bytes(tiny, service_bytes(tiny, [(0, 4), (4, 8), (8, 12)], base, draft)))
    assert lines and lines[0].startswith("board board-1: its services need") and "memory_mib is 3072" in lines[0]
    assert needs["scheduler"] == 300 * MIB


def test_spec_places_every_service_at_its_board_with_distinct_ports():
    inv = load_inventory(EXAMPLE)
    spec = cluster_spec(inv, "/m/base", "/m/draft", [(0, 4), (4, 8), (8, 12)])
    assert spec.scheduler.host == spec.drafter.host == "10.0.0.11"
    assert [s.host for s in spec.stages] == ["10.0.0.12", "10.0.0.13", "10.0.0.14"]
    assert spec.verifier.host == "10.0.0.15" and spec.dtype == "bfloat16"
    assert ports_of(spec, "scheduler") == [7700, 7701, 7702] and ports_of(spec, "drafter") == [7703, 7704]
    assert spec.verifier.metrics_url == "http://10.0.0.15:7702/metrics"
    assert [s.layers for s in spec.stages] == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(InventoryError):
        cluster_spec(inv, "/m/base", "/m/draft", [(0, 12)])
