"""``flowring plan``: split the base model's layers over hosts by their memory and speed, and print the plan.

Hosts file (JSON; see ``infra/hosts.example.json``), hosts in pipeline order, the first also holding
the token embedding::

    {"hosts": [
        {"name": "board-1", "address": "10.0.0.11", "memory_mib": 2048, "speed": 40.0, "cpus": "0-3"},
        {"name": "board-2", "address": "10.0.0.12", "memory_mib": 1024, "speed": 25.0}
    ]}

``memory_mib``: what flowring may use on that host (weights + KV cache + ``--overhead-mib``);
``speed``: decoder-layer forwards per second of a 16-token step, as ``--measure`` prints (hosts
without one take the measured figure); ``cpus``: optional taskset CPU list. The verifier (final
norm + lm_head) and the drafter are not placed by the plan; their head size is printed for reference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import median
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from common.cluster.partition import (
    MIB,
    PartitionError,
    Plan,
    format_ranges,
    human_bytes,
    layer_costs,
    parse_hosts,
    plan_partition,
)
from common.models.dtypes import dtype_bytes, model_dtype_problem
from common.models.kv_memory import kv_cache_bytes
from services.cli.errors import fail

MEASURE_TOKENS = 16
MEASURE_REPEATS = 5
HOSTS_HELP = ('JSON {"hosts": [{"name", "address", "memory_mib", "speed", "cpus"?}, ...]} in pipeline order; '
              "see infra/hosts.example.json.")

app = typer.Typer(add_completion=False, help="Plan which layers each host runs, by memory and speed.")



@app.command()
def plan(
    base: Annotated[str, typer.Option(help="Base model: catalog name or Hugging Face folder.")],
    hosts: Annotated[Path | None, typer.Option(help=HOSTS_HELP)] = None,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16 (as `flowring up --dtype`).")] = "float32",
    kv_tokens: Annotated[int, typer.Option(help="KV-cache rows each stage must have room for.")] = 2048,
    overhead_mib: Annotated[float, typer.Option(help="Fixed memory per stage process (runtime, buffers).")] = 300,
    measure: Annotated[bool, typer.Option(help="Time a decoder layer here; hosts without speed take it.")] = False,
) -> None:
    """Split the base model's decoder layers over the hosts, minimising the slowest stage's step time."""
    if problem := model_dtype_problem(dtype):
        fail(f"--{problem}")
    if kv_tokens < 0 or overhead_mib < 0:
        fail("--kv-tokens and --overhead-mib must be non-negative")
    if hosts is None and not measure:
        fail("give --hosts FILE (or --measure alone to time this host)")
    from common.models.catalog import ModelStoreError
    from common.models.modeling import ModelingError
    from common.models.store import resolve

    try:
        model_dir = resolve(base)
        measured = measure_layer_speed(model_dir, dtype) if measure else None
        if measured is not None:
            typer.echo(f"this host: {measured:.1f} layer-forwards/s ({MEASURE_TOKENS}-token step, {dtype}, "
                       f"{_threads()} torch threads); use it as \"speed\" in the hosts file")
        if hosts is None:
            return
        host_list = parse_hosts(_read_json(hosts), default_speed=measured)
        costs = layer_costs(model_dir, dtype_bytes(dtype))
        kv = kv_cache_bytes(kv_tokens, costs.kv_bytes_per_token)
        result = plan_partition(costs, host_list, fixed_overhead_bytes=int(overhead_mib * MIB), kv_bytes_per_layer=kv)
    except (ModelStoreError, ModelingError, PartitionError) as exc:
        fail(str(exc))
    _print_plan(result, costs.head_bytes, costs.head_compute)


def measure_layer_speed(model_dir: Path, dtype: str, *, repeats: int = MEASURE_REPEATS) -> float:
    """Decoder-layer forwards per second of a ``MEASURE_TOKENS``-row step on this host (median of repeats)."""
    import torch

    from common.models.modeling import causal_attend, load_slice

    layer = load_slice(model_dir, (0, 1), with_embedding=False, with_head=False, dtype=getattr(torch, dtype))
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(MEASURE_TOKENS, layer.spec.hidden_size, generator=gen).to(layer.dtype)
    positions = torch.arange(MEASURE_TOKENS)
    attend = causal_attend(0, MEASURE_TOKENS)
    cache = layer.new_cache()
    times = []
    for i in range(repeats + 1):  # the first run warms up and is not counted
        cache.reset()
        start = time.perf_counter()
        layer.forward(hidden, positions, attend, cache)
        if i:
            times.append(time.perf_counter() - start)
    return 1.0 / max(median(times), 1e-9)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PartitionError(f"cannot read hosts file {path}: {exc}") from exc


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _print_plan(result: Plan, head_bytes: int, head_compute: float) -> None:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("stage", justify="right")
    table.add_column("host", overflow="fold")
    table.add_column("layers")
    table.add_column("MiB / budget", justify="right")
    table.add_column("step ms", justify="right")
    table.add_column("")
    for i, stage in enumerate(result.stages):
        first, last = stage.layers
        layers = f"{first}-{last} ({stage.num_layers}{'+emb' if stage.with_embedding else ''})"
        memory = f"{stage.memory_bytes / MIB:,.0f} / {stage.host.memory_bytes / MIB:,.0f}"
        bottleneck = i == result.bottleneck
        table.add_row(str(i + 1), f"{stage.host.name} {stage.host.address}", layers, memory,
                      f"{stage.step_time * 1000:.1f}", "bottleneck" if bottleneck else "",
                      style="bold" if bottleneck else None)
    console = Console()
    console.print(table)
    console.print(f"per-step time {result.step_time * 1000:.1f} ms ({1 / result.step_time:.1f} steps/s) "
                  f"if speeds are layer-forwards/s; layer ranges: {format_ranges(result.ranges)}")
    console.print(f"verifier (final norm + lm_head): {human_bytes(head_bytes)} of weights, "
                  f"compute {head_compute:.1f} layer-forwards per step (not placed by this plan)")

