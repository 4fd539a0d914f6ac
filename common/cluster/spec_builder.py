"""The one way a ClusterSpec is built, for a local, a LAN and a pinned cluster alike.

A command turns its options (or an inventory) into a :class:`ClusterRequest` at its edge: what the user
asked, with no ports and no hosts. :func:`build_spec` then places the services: each on the host that
``host_of`` names, with ports that ``take_port`` hands out, stage ``i`` holding ``ranges[i]``, and, when the
request pins, every ring service on cores of its own. Nothing patches the spec afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common.cluster.settings import Admission, ClusterSpec, Placement, Timeouts
from common.speculation.budget import DEFAULT_TOTAL_NODES
from common.speculation.modes import DraftSettings


class PinError(ValueError):
    """The host has too few cores to give every service its own."""


@dataclass(frozen=True)
class Pinning:
    """Every ring service on ``cores_per_service`` consecutive cores of its own (taskset), out of ``host_cores``.

    The scheduler shares the verifier's cores: it only routes small messages. Torch threads per service follow
    the cores each has. A many-core host emulates a LAN of boards this way.
    """

    cores_per_service: int
    host_cores: int


@dataclass(frozen=True)
class ClusterRequest:
    """What the user asked of a cluster, before it is placed: models, numerics, tree, limits, pinning."""

    base: str  # resolved local Hugging Face folder
    draft: str = ""  # "" when the drafter holds a head
    draft_head: str = ""
    draft_vocab: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 0  # torch threads per service; 0: torch's default (a pinned cluster: its cores per service)
    row_invariant: bool = True
    deterministic: bool = True  # on CUDA: torch's deterministic settings at each service's start
    draft_settings: DraftSettings = field(default_factory=DraftSettings)
    timeouts: Timeouts = field(default_factory=Timeouts)
    admission: Admission = field(default_factory=Admission)
    default_mode: str = "flowspec"
    pinning: Pinning | None = None
    speculation_budget: int = DEFAULT_TOTAL_NODES  # draft nodes of every request in flight together
    speculation_max_in_flight: int = 0  # beyond this many requests in flight none speculates (0: no limit)


def ports_needed(stages: int) -> int:
    """Ports a cluster of ``stages`` stages binds: every service's ring ports and a metrics port each."""
    return 3 * stages + 8  # scheduler 3, drafter 2, each stage 3, verifier 3


def build_spec(asked: ClusterRequest, ranges: Sequence[tuple[int, int]], host_of: Callable[[str], str],
               take_port: Callable[[str], int], device_of: Callable[[str], str] = lambda name: "") -> ClusterSpec:
    """``asked`` placed: service ``name`` at ``host_of(name)``, binding ports ``take_port(name)`` hands out
    (scheduler first, then the ring in order), on torch device ``device_of(name)`` ("": the cluster's);
    stage ``i`` holds layers ``ranges[i]``.

    Raises :class:`PinError` when the request pins more cores than its host has.
    """
    ring = ["drafter", *(f"stage-{i + 1}" for i in range(len(ranges))), "verifier"]
    cpus = pinned_cpus(ring, asked.pinning) if asked.pinning is not None else {}
    cpus["scheduler"] = cpus.get("verifier", "")

    def place(name: str, *kinds: str, layers: tuple[int, int] = (0, 0)) -> Placement:
        ports = {kind: take_port(name) for kind in kinds}
        return Placement(name, host_of(name), layers=layers, cpus=cpus.get(name, ""), metrics_port=take_port(name),
                         device="" if name == "scheduler" else device_of(name),
                         **ports)  # type: ignore[arg-type]

    scheduler = place("scheduler", "report_port", "client_port")
    drafter = place("drafter", "cmd_port")
    stages = tuple(place(name, "data_port", "cmd_port", layers=(r[0], r[1])) for name, r in zip(ring[1:-1], ranges, strict=True))
    verifier = place("verifier", "data_port", "cmd_port")
    threads = asked.pinning.cores_per_service if asked.pinning is not None else asked.threads
    return ClusterSpec(
        base=asked.base, draft=asked.draft, draft_head=asked.draft_head, draft_vocab=asked.draft_vocab,
        dtype=asked.dtype, device=asked.device, threads=threads, row_invariant=asked.row_invariant,
        deterministic=asked.deterministic,
        drafter=drafter, stages=stages, verifier=verifier, scheduler=scheduler,
        draft_settings=asked.draft_settings, timeouts=asked.timeouts, admission=asked.admission,
        default_mode=asked.default_mode, speculation_budget=asked.speculation_budget,
        speculation_max_in_flight=asked.speculation_max_in_flight,
    )


def pinned_cpus(ring: Sequence[str], pinning: Pinning) -> dict[str, str]:
    """Each ring service's taskset CPU list: ``cores_per_service`` consecutive cores, in ring order."""
    n = pinning.cores_per_service
    needed = len(ring) * n
    if needed > pinning.host_cores:
        raise PinError(f"{len(ring)} services x {n} cores need {needed} cores; this host has {pinning.host_cores}")
    return {name: f"{i * n}-{(i + 1) * n - 1}" for i, name in enumerate(ring)}

