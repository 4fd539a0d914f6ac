"""Memory-aware pipeline partitioning: costs from checkpoint headers, the planner, range and host parsing."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from common.cluster.partition import (
    Host,
    HostsFileError,
    LayerCosts,
    PartitionError,
    even_split,
    explicit_ranges,
    format_ranges,
    layer_costs,
    parse_hosts,
    plan_partition,
)
from common.models.kv_memory import kv_cache_bytes
from common.models.modeling import load_slice
from tests.support.tiny_models import make_tiny_model

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("partition") / "qwen", family="qwen2", num_layers=4)


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("partition") / "tied", num_layers=3, tie=True)


def uniform_costs(n: int, layer: int = 10 * MIB, embedding: int = 0) -> LayerCosts:
    return LayerCosts(dtype_bytes=2, layer_bytes=(layer,) * n, embedding_bytes=embedding, head_bytes=embedding,
                      layer_compute=(1.0,) * n, head_compute=5.0, kv_bytes_per_token=1024)


def host(name: str, memory_mib: float = 10_000, speed: float = 1.0) -> Host:
    return Host(name, f"10.0.0.{len(name)}", int(memory_mib * MIB), speed)


def sizes(plan) -> list[int]:
    return [stage.num_layers for stage in plan.stages]


# --- costs ------------------------------------------------------------------------------------------


def _file_bytes(model_dir, keep) -> int:
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as handle:
        names = handle.keys()
        return sum(handle.get_tensor(k).nbytes for k in names if keep(k))


def _slice_bytes(model_dir, layer_range, *, embedding=False, head=False, dtype=torch.float32) -> int:
    module = load_slice(model_dir, layer_range, with_embedding=embedding, with_head=head, dtype=dtype)
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_costs_equal_the_checkpoint_tensor_bytes(tiny) -> None:
    costs = layer_costs(tiny, 4)  # the tiny checkpoint is stored in float32
    assert costs.num_layers == 4
    for i in range(4):
        assert costs.layer_bytes[i] == _file_bytes(tiny, lambda k, i=i: k.startswith(f"model.layers.{i}."))
    assert costs.embedding_bytes == _file_bytes(tiny, lambda k: k == "model.embed_tokens.weight")
    assert costs.head_bytes == _file_bytes(tiny, lambda k: k in ("model.norm.weight", "lm_head.weight"))
    assert costs.total_bytes == _file_bytes(tiny, lambda k: True)


def test_costs_equal_the_loaded_slice_bytes_at_bfloat16(tiny) -> None:
    costs = layer_costs(tiny, 2)
    bf16 = torch.bfloat16
    assert costs.layer_bytes[1] == _slice_bytes(tiny, (1, 2), dtype=bf16)
    assert costs.embedding_bytes + sum(costs.layer_bytes[:2]) == _slice_bytes(tiny, (0, 2), embedding=True, dtype=bf16)
    assert costs.head_bytes == _slice_bytes(tiny, (4, 4), head=True, dtype=bf16)


def test_tied_head_still_costs_a_full_copy(tiny_tied) -> None:
    costs = layer_costs(tiny_tied, 4)
    assert costs.head_bytes == costs.embedding_bytes + 64 * 4  # the matrix plus the final norm
    assert costs.head_bytes == _slice_bytes(tiny_tied, (3, 3), head=True)


def test_compute_is_per_layer_with_the_head_relative_to_a_layer(tiny) -> None:
    costs = layer_costs(tiny, 2)
    h, kv, inter, vocab = 64, 2 * 16, 2 * 64 + 32, 320
    layer_macs = 2 * h * h + 2 * h * kv + 3 * h * inter
    assert costs.layer_compute == (1.0,) * 4
    assert costs.head_compute == pytest.approx(vocab * h / layer_macs)
    assert costs.kv_bytes_per_token == 2 * kv * 2


def test_kv_bytes_follow_the_cache_doubling() -> None:
    costs = uniform_costs(2)
    assert kv_cache_bytes(0, costs.kv_bytes_per_token) == 256 * 1024
    assert kv_cache_bytes(2048, costs.kv_bytes_per_token) == 2048 * 1024
    assert kv_cache_bytes(2049, costs.kv_bytes_per_token) == 4096 * 1024


# --- planner ----------------------------------------------------------------------------------------


def test_equal_hosts_get_near_equal_ranges() -> None:
    plan = plan_partition(uniform_costs(28), [host("a"), host("b"), host("c")],
                          fixed_overhead_bytes=0, kv_bytes_per_layer=0)
    assert max(sizes(plan)) - min(sizes(plan)) <= 1
    assert plan.ranges[0][0] == 0 and plan.ranges[-1][1] == 28
    assert plan.bottleneck_stage.num_layers == 10


def test_equal_hosts_split_like_even_split_when_it_divides() -> None:
    plan = plan_partition(uniform_costs(28), [host(n) for n in "abcd"], fixed_overhead_bytes=0, kv_bytes_per_layer=0)
    assert plan.ranges == even_split(28, 4)


def test_slow_host_gets_fewer_layers() -> None:
    plan = plan_partition(uniform_costs(24), [host("fast", speed=3.0), host("slow", speed=1.0)],
                          fixed_overhead_bytes=0, kv_bytes_per_layer=0)
    assert sizes(plan) == [18, 6]
    assert plan.stages[0].step_time == pytest.approx(6.0) and plan.step_time == pytest.approx(6.0)


def test_small_host_gets_fewer_layers_and_memory_is_accounted() -> None:
    costs = uniform_costs(20, layer=10 * MIB, embedding=50 * MIB)
    plan = plan_partition(costs, [host("big", 1000), host("small", 100)],
                          fixed_overhead_bytes=20 * MIB, kv_bytes_per_layer=2 * MIB)
    assert sizes(plan) == [14, 6]  # small: 20 + 6 * 12 = 92 MiB <= 100; 7 layers would be 104 MiB
    first, second = plan.stages
    assert first.with_embedding and not second.with_embedding
    assert first.memory_bytes == 50 * MIB + 14 * 10 * MIB + 14 * 2 * MIB + 20 * MIB
    assert second.memory_bytes == 92 * MIB
    assert plan.bottleneck == 0


def test_impossible_budget_names_the_host_and_the_shortfall() -> None:
    costs = uniform_costs(8, layer=10 * MIB, embedding=50 * MIB)
    with pytest.raises(PartitionError, match=r"^host tiny cannot hold even the embedding and layer 0 .*short"):
        plan_partition(costs, [host("tiny", 30), host("b")], fixed_overhead_bytes=0, kv_bytes_per_layer=0)
    with pytest.raises(PartitionError, match=r"board-2 would need layers 3-8 \(50.0 MiB\).*10.0 MiB .* short"):
        plan_partition(costs, [host("board-1", 80), host("board-2", 40)], fixed_overhead_bytes=0,
                       kv_bytes_per_layer=0)


def test_error_messages_are_one_line() -> None:
    costs = uniform_costs(8, layer=10 * MIB, embedding=50 * MIB)
    with pytest.raises(PartitionError) as info:
        plan_partition(costs, [host("a", 80), host("b", 40)], fixed_overhead_bytes=MIB, kv_bytes_per_layer=MIB)
    assert "\n" not in str(info.value) and "b would need" in str(info.value)


def test_more_hosts_than_layers_is_an_error() -> None:
    with pytest.raises(PartitionError, match="3 hosts but the model has only 2 layers"):
        plan_partition(uniform_costs(2), [host("a"), host("b"), host("c")], fixed_overhead_bytes=0,
                       kv_bytes_per_layer=0)


def test_hosts_reject_bad_memory_and_speed() -> None:
    with pytest.raises(PartitionError, match="memory"):
        Host("a", "x", 0, 1.0)
    with pytest.raises(PartitionError, match="speed"):
        Host("a", "x", 1, math.nan)


@st.composite
def instances(draw: st.DrawFn) -> tuple[LayerCosts, list[Host], int, int]:
    n = draw(st.integers(1, 8))
    m = draw(st.integers(1, min(n, 4)))
    layer_bytes = tuple(draw(st.lists(st.integers(1, 50), min_size=n, max_size=n)))
    compute = tuple(draw(st.lists(st.sampled_from([0.5, 1.0, 1.0, 1.5, 2.0]), min_size=n, max_size=n)))
    costs = LayerCosts(dtype_bytes=1, layer_bytes=layer_bytes, embedding_bytes=draw(st.integers(0, 60)),
                       head_bytes=0, layer_compute=compute, head_compute=1.0, kv_bytes_per_token=1)
    hosts = [Host(f"h{i}", "x", draw(st.integers(1, 250)), draw(st.sampled_from([0.5, 1.0, 2.0, 3.0, 7.0])))
             for i in range(m)]
    return costs, hosts, draw(st.integers(0, 20)), draw(st.integers(0, 5))


def brute_force(costs: LayerCosts, hosts: list[Host], overhead: int, kv: int) -> float:
    n, m, best = costs.num_layers, len(hosts), math.inf
    for cuts in itertools.combinations(range(1, n), m - 1):
        bounds = (0, *cuts, n)
        worst = 0.0
        for j, h in enumerate(hosts):
            a, b = bounds[j], bounds[j + 1]
            need = sum(costs.layer_bytes[a:b]) + kv * (b - a) + overhead + (costs.embedding_bytes if j == 0 else 0)
            if need > h.memory_bytes:
                break
            worst = max(worst, sum(costs.layer_compute[a:b]) / h.speed)
        else:
            best = min(best, worst)
    return best


@settings(max_examples=300, deadline=None)
@given(instances())
def test_plan_is_optimal_against_brute_force(instance) -> None:
    costs, hosts, overhead, kv = instance
    best = brute_force(costs, hosts, overhead, kv)
    if best == math.inf:
        with pytest.raises(PartitionError) as info:
            plan_partition(costs, hosts, fixed_overhead_bytes=overhead, kv_bytes_per_layer=kv)
        assert "short" in str(info.value) and any(h.name in str(info.value) for h in hosts)
        return
    plan = plan_partition(costs, hosts, fixed_overhead_bytes=overhead, kv_bytes_per_layer=kv)
    assert plan.step_time == pytest.approx(best, rel=1e-9)
    assert plan.ranges[0][0] == 0 and plan.ranges[-1][1] == costs.num_layers
    assert all(a < b for a, b in plan.ranges)
    assert all(x[1] == y[0] for x, y in itertools.pairwise(plan.ranges))
    assert all(s.memory_bytes <= s.host.memory_bytes for s in plan.stages)
    assert [s.host for s in plan.stages] == hosts
    assert plan.bottleneck_stage.step_time == max(s.step_time for s in plan.stages)


# --- explicit ranges and hosts files ----------------------------------------------------------------


@pytest.mark.parametrize("spec", ["0-10,10-20,20-28", "0:10,10:20,20:28", " 0-10 , 10:20,20-28 "])
def test_explicit_ranges_parse(spec: str) -> None:
    assert explicit_ranges(spec, 28) == [(0, 10), (10, 20), (20, 28)]


def test_explicit_ranges_round_trip() -> None:
    assert explicit_ranges(format_ranges(even_split(28, 3)), 28) == even_split(28, 3)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "expected e.g."),
        ("0-10,,10-28", "expected e.g."),
        ("0-10,12-28", "should start at 10"),
        ("0-10,8-28", "should start at 10"),
        ("2-10,10-28", "should start at 0"),
        ("0-10,10-20", "end at 20 but the model has 28"),
        ("0-10,10-30", "end at 30"),
        ("0-10,10-10,10-28", "empty"),
        ("0-a,10-28", "not FIRST-LAST"),
        ("10,10-28", "not FIRST-LAST"),
    ],
)
def test_explicit_ranges_errors(spec: str, match: str) -> None:
    with pytest.raises(PartitionError, match=match):
        explicit_ranges(spec, 28)


def test_parse_hosts_reads_the_documented_format() -> None:
    data = {"hosts": [{"name": "board-1", "address": "10.0.0.11", "memory_mib": 2048, "speed": 40.0, "cpus": "0-3"},
                      {"name": "board-2", "address": "10.0.0.12", "memory_mib": 1024.5}]}
    first, second = parse_hosts(data, default_speed=12.5)
    assert first == Host("board-1", "10.0.0.11", 2048 * MIB, 40.0, "0-3")
    assert second == Host("board-2", "10.0.0.12", int(1024.5 * MIB), 12.5, None)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "JSON object"),
        ({"hosts": []}, "at least one host"),
        ({"hosts": ["a"]}, r"hosts\[0\] must be a JSON object"),
        ({"hosts": [{"name": "a", "address": "x", "memory_mb": 1, "speed": 1}]}, "unknown field.*memory_mb"),
        ({"hosts": [{"address": "x", "memory_mib": 1, "speed": 1}]}, "non-empty string name"),
        ({"hosts": [{"name": "a", "memory_mib": 1, "speed": 1}]}, "host a: address"),
        ({"hosts": [{"name": "a", "address": "x", "memory_mib": -1, "speed": 1}]}, "memory_mib must be a positive"),
        ({"hosts": [{"name": "a", "address": "x", "memory_mib": True, "speed": 1}]}, "memory_mib"),
        ({"hosts": [{"name": "a", "address": "x", "memory_mib": 1}]}, "host a has no speed"),
        ({"hosts": [{"name": "a", "address": "x", "memory_mib": 1, "speed": 0}]}, "speed must be"),
        ({"hosts": [{"name": "a", "address": "x", "memory_mib": 1, "speed": 1, "cpus": 3}]}, "taskset"),
        ({"hosts": [{"name": "a", "address": "x", "memory_mib": 1, "speed": 1}] * 2}, "appears twice"),
    ],
)
def test_parse_hosts_errors(data: object, match: str) -> None:
    with pytest.raises(HostsFileError, match=match):
        parse_hosts(data)
