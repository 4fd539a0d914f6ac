"""Splitting a model's decoder layers into contiguous stage ranges, evenly or by host memory and speed.

Everything here is pure except :func:`layer_costs`, which reads safetensors headers (never tensor data).

Units: a decoder layer's compute is 1.0 (a "layer-forward"); a host's ``speed`` is layer-forwards per
second, so a stage's step time ``compute / speed`` is in seconds when speeds are measured that way
(``flowring plan --measure``), and in relative units otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from common.models.kv_memory import kv_bytes_per_token

MIB = 1024 * 1024
HOST_FIELDS = frozenset({"name", "address", "memory_mib", "speed", "cpus"})

EMBED_NAME = "model.embed_tokens.weight"
NORM_NAME = "model.norm.weight"
HEAD_NAME = "lm_head.weight"
LAYER_PREFIX = "model.layers."


class PartitionError(ValueError):
    """No valid split: the hosts cannot hold the model, or a layer-range or hosts spec is invalid."""


class HostsFileError(PartitionError):
    """A hosts description is malformed."""


@dataclass(frozen=True)
class LayerCosts:
    """Memory and relative compute of a model's parts at one dtype.

    ``head_bytes`` (final norm + lm_head) counts a full vocab x hidden matrix even for tied models:
    the verifier is a separate process and holds its own copy. Compute is per token, in units of
    one decoder layer (weight-matrix multiply-accumulates; attention over the context is left out).
    """

    dtype_bytes: int
    layer_bytes: tuple[int, ...]
    embedding_bytes: int
    head_bytes: int
    layer_compute: tuple[float, ...]
    head_compute: float
    kv_bytes_per_token: int  # one layer's keys + values for one token

    def __post_init__(self) -> None:
        if len(self.layer_bytes) != len(self.layer_compute) or not self.layer_bytes:
            raise PartitionError(
                f"need one byte size and one compute per layer, got {len(self.layer_bytes)} and "
                f"{len(self.layer_compute)}"
            )

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layer_bytes)

    @property
    def total_bytes(self) -> int:
        """Embedding, every layer and the head (the head counted separately even when tied)."""
        return self.embedding_bytes + sum(self.layer_bytes) + self.head_bytes


@dataclass(frozen=True)
class Host:
    """A machine that runs one pipeline stage.

    ``memory_bytes`` is the budget flowring may use there; ``speed`` its relative compute throughput
    (layer-forwards per second, higher is faster); ``cpus`` an optional taskset CPU list.
    """

    name: str
    address: str
    memory_bytes: int
    speed: float
    cpus: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise PartitionError("a host needs a non-empty name")
        if self.memory_bytes <= 0:
            raise PartitionError(f"host {self.name}: memory must be positive, got {self.memory_bytes} bytes")
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise PartitionError(f"host {self.name}: speed must be a positive number, got {self.speed}")


@dataclass(frozen=True)
class StagePlan:
    """One stage of a plan: its host, layers ``[first, last)``, memory and expected step time."""

    host: Host
    layers: tuple[int, int]
    with_embedding: bool
    weight_bytes: int
    kv_bytes: int
    overhead_bytes: int
    compute: float  # layer-forwards per step
    step_time: float  # compute / host.speed: seconds when speed is layer-forwards per second

    @property
    def num_layers(self) -> int:
        """Number of decoder layers in the stage."""
        return self.layers[1] - self.layers[0]

    @property
    def memory_bytes(self) -> int:
        """Weights + KV budget + fixed overhead."""
        return self.weight_bytes + self.kv_bytes + self.overhead_bytes


@dataclass(frozen=True)
class Plan:
    """Stages in pipeline order; ``bottleneck`` indexes the slowest."""

    stages: tuple[StagePlan, ...]
    bottleneck: int

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """Layer ranges in stage order, as ``plan_local(layer_ranges=...)`` takes them."""
        return [stage.layers for stage in self.stages]

    @property
    def bottleneck_stage(self) -> StagePlan:
        """The stage with the longest expected step time."""
        return self.stages[self.bottleneck]

    @property
    def step_time(self) -> float:
        """The pipeline's per-step time: the bottleneck stage's."""
        return self.bottleneck_stage.step_time


def even_split(num_layers: int, stages: int) -> list[tuple[int, int]]:
    """``stages`` contiguous, near-equal, non-empty layer ranges covering ``[0, num_layers)``."""
    if not 1 <= stages <= num_layers:
        raise ValueError(f"cannot split {num_layers} layers into {stages} stages")
    base, extra = divmod(num_layers, stages)
    ranges, start = [], 0
    for i in range(stages):
        size = base + (1 if i < extra else 0)
        ranges.append((start, start + size))
        start += size
    return ranges


def layer_costs(model_dir: Path, dtype_bytes: int) -> LayerCosts:
    """Costs of a checkpoint's parts at ``dtype_bytes`` per element, from its safetensors header shapes."""
    from safetensors import SafetensorError, safe_open

    from common.models.modeling import load_model_spec
    from common.models.modeling.errors import CheckpointError
    from common.models.modeling.loader import _checkpoint_files

    if dtype_bytes <= 0:
        raise PartitionError(f"dtype_bytes must be positive, got {dtype_bytes}")
    model_dir = Path(model_dir)
    spec = load_model_spec(model_dir)
    files = _checkpoint_files(model_dir)
    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    try:
        for path, names in by_file.items():
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in names:
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read the safetensors header in {model_dir}: {exc}") from exc
    return costs_from_shapes(shapes, spec.num_layers, dtype_bytes, spec.num_kv_heads * spec.head_dim)


def costs_from_shapes(shapes: Mapping[str, Sequence[int]], num_layers: int, dtype_bytes: int,
                      kv_dim: int) -> LayerCosts:
    """Costs from Hugging Face tensor names and shapes; a missing ``lm_head`` means the head is tied."""
    layer_elems = [0] * num_layers
    layer_macs = [0] * num_layers
    for name, shape in shapes.items():
        if not name.startswith(LAYER_PREFIX) or "rotary_emb" in name:  # rotary buffers are not loaded
            continue
        index = int(name[len(LAYER_PREFIX) :].split(".", 1)[0])
        if index >= num_layers:
            continue
        layer_elems[index] += math.prod(shape)
        if len(shape) == 2:
            layer_macs[index] += math.prod(shape)
    empty = [i for i, elems in enumerate(layer_elems) if elems == 0]
    if empty:
        raise PartitionError(f"checkpoint has no tensors for layer {empty[0]} of {num_layers}")
    if EMBED_NAME not in shapes:
        raise PartitionError(f"checkpoint lacks {EMBED_NAME}")
    embed = math.prod(shapes[EMBED_NAME])
    head = math.prod(shapes.get(HEAD_NAME, shapes[EMBED_NAME]))
    norm = math.prod(shapes[NORM_NAME]) if NORM_NAME in shapes else 0
    mean_macs = sum(layer_macs) / num_layers
    return LayerCosts(
        dtype_bytes=dtype_bytes,
        layer_bytes=tuple(e * dtype_bytes for e in layer_elems),
        embedding_bytes=embed * dtype_bytes,
        head_bytes=(head + norm) * dtype_bytes,
        layer_compute=tuple(macs / mean_macs for macs in layer_macs),
        head_compute=head / mean_macs,
        kv_bytes_per_token=kv_bytes_per_token(kv_dim, dtype_bytes),
    )


def plan_partition(
    costs: LayerCosts, hosts: Sequence[Host], *, fixed_overhead_bytes: int, kv_bytes_per_layer: int
) -> Plan:
    """Contiguous layer ranges, one per host in order (each >= 1 layer; the first host also holds the
    embedding), minimising the slowest stage's step time subject to every host's memory.

    Among splits with the optimal bottleneck, the one with the smallest sum of squared stage times is
    chosen (balanced stages). Raises ``PartitionError`` when no split fits.
    """
    n, m = costs.num_layers, len(hosts)
    if m == 0:
        raise PartitionError("no hosts to plan for")
    if m > n:
        raise PartitionError(f"{m} hosts but the model has only {n} layers; every host needs at least one")
    model = _StageModel(costs, hosts, fixed_overhead_bytes, kv_bytes_per_layer)

    # best[j][b]: smallest bottleneck of hosts 0..j covering layers [0, b).
    best = [[math.inf] * (n + 1) for _ in range(m)]
    for j in range(m):
        for b in range(j + 1, n - (m - 1 - j) + 1):
            for a in range(j, b) if j else (0,):
                prior = best[j - 1][a] if j else 0.0
                if prior < math.inf and model.fits(j, a, b):
                    best[j][b] = min(best[j][b], max(prior, model.time(j, a, b)))
    bottleneck = best[m - 1][n]
    if bottleneck == math.inf:
        raise PartitionError(model.diagnose())

    # Among splits whose every stage takes <= bottleneck, minimise the sum of squared stage times.
    squares = [[math.inf] * (n + 1) for _ in range(m)]
    choice = [[-1] * (n + 1) for _ in range(m)]
    for j in range(m):
        for b in range(j + 1, n - (m - 1 - j) + 1):
            for a in range(j, b) if j else (0,):
                prior = squares[j - 1][a] if j else 0.0
                if prior == math.inf or not model.fits(j, a, b):
                    continue
                t = model.time(j, a, b)
                if t <= bottleneck and prior + t * t < squares[j][b]:
                    squares[j][b], choice[j][b] = prior + t * t, a
    bounds = [n]
    for j in range(m - 1, 0, -1):
        bounds.append(choice[j][bounds[-1]])
    bounds.append(0)
    bounds.reverse()
    stages = tuple(model.stage(j, bounds[j], bounds[j + 1]) for j in range(m))
    slowest = max(range(m), key=lambda j: (stages[j].step_time, -j))
    return Plan(stages=stages, bottleneck=slowest)


def explicit_ranges(spec: str, num_layers: int) -> list[tuple[int, int]]:
    """Parse ``"0-10,10-20,20-28"`` (or ``"0:10,..."``): non-empty, contiguous ranges covering every layer."""
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p for p in parts):
        raise PartitionError(f"layer ranges {spec!r}: expected e.g. 0-10,10-20,20-{num_layers}")
    ranges: list[tuple[int, int]] = []
    for part in parts:
        sep = ":" if ":" in part else "-"
        first, _, last = part.partition(sep)
        try:
            a, b = int(first), int(last)
        except ValueError:
            raise PartitionError(f"layer range {part!r} is not FIRST-LAST (e.g. 0-10)") from None
        if not 0 <= a < b:
            raise PartitionError(f"layer range {part!r} is empty or negative")
        expected = ranges[-1][1] if ranges else 0
        if a != expected:
            raise PartitionError(f"layer range {part!r} should start at {expected}: ranges must be contiguous")
        ranges.append((a, b))
    if ranges[-1][1] != num_layers:
        raise PartitionError(f"layer ranges end at {ranges[-1][1]} but the model has {num_layers} layers")
    return ranges


def format_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    """The inverse of :func:`explicit_ranges`: ``"0-10,10-20,20-28"``."""
    return ",".join(f"{a}-{b}" for a, b in ranges)


def parse_hosts(data: object, *, default_speed: float | None = None) -> tuple[Host, ...]:
    """Hosts from a parsed hosts file ``{"hosts": [{"name", "address", "memory_mib", "speed"?, "cpus"?}]}``.

    A host without ``speed`` gets ``default_speed``; without either it is an error.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("hosts"), list) or not data["hosts"]:
        raise HostsFileError('hosts file must be a JSON object {"hosts": [...]} with at least one host')
    hosts: list[Host] = []
    for i, entry in enumerate(data["hosts"]):
        label = f"hosts[{i}]"
        if not isinstance(entry, Mapping):
            raise HostsFileError(f"{label} must be a JSON object")
        unknown = sorted(set(entry) - HOST_FIELDS)
        if unknown:
            raise HostsFileError(f"{label} has unknown field(s) {', '.join(unknown)}; known: {sorted(HOST_FIELDS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise HostsFileError(f"{label} needs a non-empty string name")
        address, memory, speed, cpus = (entry.get(k) for k in ("address", "memory_mib", "speed", "cpus"))
        if not isinstance(address, str) or not address:
            raise HostsFileError(f"host {name}: address must be a non-empty string")
        if not _is_number(memory) or memory <= 0:
            raise HostsFileError(f"host {name}: memory_mib must be a positive number, got {memory!r}")
        if speed is None:
            if default_speed is None:
                raise HostsFileError(f"host {name} has no speed; add one (layer-forwards/s) or pass --measure")
            speed = default_speed
        if not _is_number(speed) or not (math.isfinite(speed) and speed > 0):
            raise HostsFileError(f"host {name}: speed must be a positive number, got {speed!r}")
        if cpus is not None and (not isinstance(cpus, str) or not cpus):
            raise HostsFileError(f"host {name}: cpus must be a taskset CPU list such as \"0-3\"")
        if any(h.name == name for h in hosts):
            raise HostsFileError(f"host name {name} appears twice")
        hosts.append(Host(name, address, int(memory * MIB), float(speed), cpus))
    return tuple(hosts)


def human_bytes(n: float) -> str:
    """``n`` bytes as e.g. ``"812.3 MiB"``."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _StageModel:
    """Memory and time of host ``j`` holding layers ``[a, b)``, from prefix sums."""

    def __init__(self, costs: LayerCosts, hosts: Sequence[Host], overhead: int, kv_per_layer: int) -> None:
        if overhead < 0 or kv_per_layer < 0:
            raise PartitionError(f"overhead and KV bytes must be non-negative, got {overhead} and {kv_per_layer}")
        self.costs, self.hosts, self.overhead, self.kv = costs, hosts, overhead, kv_per_layer
        self.bytes_prefix, self.compute_prefix = [0], [0.0]
        for size, compute in zip(costs.layer_bytes, costs.layer_compute, strict=True):
            self.bytes_prefix.append(self.bytes_prefix[-1] + size)
            self.compute_prefix.append(self.compute_prefix[-1] + compute)

    def weights(self, j: int, a: int, b: int) -> int:
        return self.bytes_prefix[b] - self.bytes_prefix[a] + (self.costs.embedding_bytes if j == 0 else 0)

    def need(self, j: int, a: int, b: int) -> int:
        return self.weights(j, a, b) + self.kv * (b - a) + self.overhead

    def fits(self, j: int, a: int, b: int) -> bool:
        return self.need(j, a, b) <= self.hosts[j].memory_bytes

    def time(self, j: int, a: int, b: int) -> float:
        return (self.compute_prefix[b] - self.compute_prefix[a]) / self.hosts[j].speed

    def stage(self, j: int, a: int, b: int) -> StagePlan:
        compute = self.compute_prefix[b] - self.compute_prefix[a]
        return StagePlan(
            host=self.hosts[j], layers=(a, b), with_embedding=j == 0, weight_bytes=self.weights(j, a, b),
            kv_bytes=self.kv * (b - a), overhead_bytes=self.overhead, compute=compute,
            step_time=compute / self.hosts[j].speed,
        )

    def diagnose(self) -> str:
        """One line naming the host that cannot hold its share and by how many bytes."""
        n, m = self.costs.num_layers, len(self.hosts)
        a = 0
        for j, host in enumerate(self.hosts):
            if j == m - 1:
                short = self.need(j, a, n) - host.memory_bytes
                return (
                    f"no split fits: with every earlier host full, {host.name} would need layers {a}-{n} "
                    f"({human_bytes(self.need(j, a, n))}) but has {human_bytes(host.memory_bytes)}, "
                    f"{human_bytes(short)} ({short} bytes) short"
                )
            if not self.fits(j, a, a + 1):
                short = self.need(j, a, a + 1) - host.memory_bytes
                what = "the embedding and layer" if j == 0 else "layer"
                return (
                    f"host {host.name} cannot hold even {what} {a} ({human_bytes(self.need(j, a, a + 1))} with "
                    f"KV and overhead) in {human_bytes(host.memory_bytes)}: {human_bytes(short)} ({short} bytes) short"
                )
            b = a + 1
            while b < n - (m - 1 - j) and self.fits(j, a, b + 1):
                b += 1
            a = b
        raise AssertionError("unreachable")
