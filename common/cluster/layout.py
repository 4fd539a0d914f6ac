"""From a validated inventory to a cluster layout: layer ranges, memory per board, ports, the ClusterSpec.

Pure: model sizes come in as :class:`~common.cluster.partition.LayerCosts` (read from safetensors headers by
the caller). Each board's services take consecutive ports from the inventory's ``base_port`` (their
ring ports, then a Prometheus metrics port each).
"""

from __future__ import annotations

from common.cluster.inventory import Inventory, InventoryError
from common.cluster.partition import (
    MIB,
    Host,
    LayerCosts,
    PartitionError,
    explicit_ranges,
    human_bytes,
    plan_partition,
)
from common.cluster.settings import ClusterSpec
from common.cluster.spec_builder import ClusterRequest, build_spec
from common.models.kv_memory import kv_cache_bytes


def layer_ranges(inv: Inventory, base: LayerCosts, draft: LayerCosts) -> list[tuple[int, int]]:
    """The inventory's explicit ranges, or ``auto``: the memory- and speed-aware split of ``flowring plan``,
    each stage board's budget reduced by the other services it also runs."""
    if inv.layers != "auto":
        ranges = explicit_ranges(inv.layers, base.num_layers)
        if len(ranges) != len(inv.stages):
            raise InventoryError(f"placement.layers gives {len(ranges)} ranges for {len(inv.stages)} stages")
        return ranges
    fixed = _fixed_service_bytes(inv, base, draft)
    hosts = []
    for name in inv.stages:
        board = inv.board(name)
        others = sum(size for role, size in fixed.items() if getattr(inv, role) == name)
        budget = board.memory_mib * MIB - others
        if budget <= 0:
            raise PartitionError(f"board {name}: its other services need {human_bytes(others)}, leaving nothing "
                                 f"of memory_mib {board.memory_mib} for a stage")
        hosts.append(Host(name, board.address, budget, board.relative_speed))
    plan = plan_partition(base, hosts, fixed_overhead_bytes=_overhead(inv),
                          kv_bytes_per_layer=kv_cache_bytes(inv.kv_tokens, base.kv_bytes_per_token))
    return plan.ranges


def service_bytes(inv: Inventory, ranges: list[tuple[int, int]], base: LayerCosts,
                  draft: LayerCosts) -> dict[str, int]:
    """Memory each service needs: its weights at the cluster dtype, its KV cache and the fixed overhead."""
    kv = kv_cache_bytes(inv.kv_tokens, base.kv_bytes_per_token)
    needs = _fixed_service_bytes(inv, base, draft)
    for i, (first, last) in enumerate(ranges):
        weights = sum(base.layer_bytes[first:last]) + (base.embedding_bytes if i == 0 else 0)
        needs[f"stage-{i + 1}"] = weights + kv * (last - first) + _overhead(inv)
    return needs


def board_bytes(inv: Inventory, needs: dict[str, int]) -> dict[str, int]:
    """Memory each board needs: the sum over the services it runs."""
    totals = dict.fromkeys((b.name for b in inv.boards), 0)
    for service, board in inv.services():
        totals[board] += needs[service]
    return totals


def memory_problems(inv: Inventory, totals: dict[str, int]) -> list[str]:
    """One line per board whose services need more than its ``memory_mib``."""
    return [
        f"board {name}: its services need {human_bytes(need)} but memory_mib is {inv.board(name).memory_mib}"
        for name, need in totals.items()
        if need > inv.board(name).memory_mib * MIB
    ]


def cluster_request(inv: Inventory, base_dir: str, draft_dir: str) -> ClusterRequest:
    """What an inventory asks of its cluster: its models, numerics, tree and timeouts."""
    return ClusterRequest(base=base_dir, draft=draft_dir, dtype=inv.dtype, device=inv.device, threads=inv.threads,
                          draft_settings=inv.tree, timeouts=inv.timeouts)


def cluster_spec(inv: Inventory, base_dir: str, draft_dir: str, ranges: list[tuple[int, int]]) -> ClusterSpec:
    """The ClusterSpec every service reads: each service at its board's address, taking consecutive ports of
    its board from ``base_port``."""
    if len(ranges) != len(inv.stages):
        raise InventoryError(f"{len(ranges)} layer ranges for {len(inv.stages)} stages")
    board_of = dict(inv.services())
    next_port = {b.name: inv.base_port for b in inv.boards}

    def take(service: str) -> int:
        next_port[board_of[service]] += 1
        return next_port[board_of[service]] - 1

    return build_spec(cluster_request(inv, base_dir, draft_dir), ranges,
                      lambda service: inv.board(board_of[service]).address, take,
                      lambda service: inv.board(board_of[service]).device)


def ports_of(spec: ClusterSpec, name: str) -> list[int]:
    """The ports service ``name`` binds."""
    place = spec.placement(name)
    ports = (place.data_port, place.cmd_port, place.report_port, place.client_port, place.metrics_port)
    return [p for p in ports if p]


def _fixed_service_bytes(inv: Inventory, base: LayerCosts, draft: LayerCosts) -> dict[str, int]:
    """Services whose size does not depend on the split: scheduler, drafter (whole draft model), verifier."""
    draft_kv = kv_cache_bytes(inv.kv_tokens, draft.kv_bytes_per_token) * draft.num_layers
    return {
        "scheduler": _overhead(inv),
        "drafter": draft.total_bytes + draft_kv + _overhead(inv),
        "verifier": base.head_bytes + _overhead(inv),
    }


def _overhead(inv: Inventory) -> int:
    return int(inv.overhead_mib * MIB)
