"""Cluster layout and per-service settings: frozen, JSON round-trippable, built at the CLI edge."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.speculation.budget import DEFAULT_TOTAL_NODES
from common.speculation.modes import DraftSettings


@dataclass(frozen=True)
class Placement:
    """Where one service runs and the ports it binds (0: the service binds none of that kind)."""

    name: str
    host: str = "127.0.0.1"
    data_port: int = 0  # ring input (stages, verifier)
    cmd_port: int = 0  # scheduler commands (ring services)
    report_port: int = 0  # scheduler only: reports from every service
    client_port: int = 0  # scheduler only: client requests
    layers: tuple[int, int] = (0, 0)  # stages only
    cpus: str = ""  # optional taskset CPU list, e.g. "0-3"
    metrics_port: int = 0  # Prometheus text endpoint over HTTP (0: off)
    public_key: str = ""  # LAN cluster: Z85 CURVE public key of its board, the server key of the sockets it binds
    device: str = ""  # torch device of this service (cpu, cuda, cuda:N); "": the cluster's device

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every ZeroMQ endpoint this service binds."""
        ports = (self.data_port, self.cmd_port, self.report_port, self.client_port)
        return tuple(self.endpoint(p) for p in ports if p)

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics" if self.metrics_port else ""


@dataclass(frozen=True)
class Timeouts:
    poll_interval_s: float = 1.0  # every receive waits at most this long, then the loop checks in
    heartbeat_interval_s: float = 0.5  # a ring service reports to the scheduler this often
    liveness_timeout_s: float = 3.0  # a service not heard from for this long is unhealthy
    request_timeout_s: float = 600.0  # from submission: a request queued or running after this fails
    ready_timeout_s: float = 600.0  # `flowring up` gives the services this long to load
    recovery_timeout_s: float = 30.0  # a request waits this long for a dead service's restart, then fails


@dataclass(frozen=True)
class Curve:
    """CURVE keys of a LAN cluster (common.wire.curve); off when ``key_file`` is empty, as on a loopback cluster."""

    key_file: str = ""  # this process's key pair: a ZeroMQ certificate holding its secret key, on its own machine
    client_keys: tuple[str, ...] = ()  # Z85 public keys the scheduler's client socket admits

    @property
    def enabled(self) -> bool:
        return bool(self.key_file)


@dataclass(frozen=True)
class Admission:
    """How many requests the scheduler runs and queues, and the KV memory each service may spend."""

    max_in_flight: int = 4  # requests in the ring at once
    max_queued: int = 16  # requests waiting for a slot; past this a request is answered busy
    kv_budget_mib: float = 0.0  # per service; 0: unchecked
    retry_after_s: float = 2.0  # the wait a busy answer suggests
    max_prompt_tokens: int = 0  # the operator's cap on a prompt's length, below the model's context; 0: the context


@dataclass(frozen=True)
class ClusterSpec:
    base: str  # resolved local Hugging Face folder
    draft: str  # "" when the drafter holds a head
    draft_head: str = ""  # head folder (common.speculation.heads): the drafter drafts with it, fed by base features
    draft_vocab: int = 0  # the draft model proposes only its N most frequent tokens (common.speculation.draft_vocab); 0: all
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 0  # torch threads per service; 0 = torch's default
    # Stages and verifier compute each row as if alone (common.models.modeling.invariant): greedy output is
    # then bitwise the same in every mode and under any timing; False: fused kernels, faster segments.
    row_invariant: bool = True
    # On CUDA: torch's deterministic algorithms and settings at each service's start (common.models.devices).
    deterministic: bool = True
    drafter: Placement = field(default_factory=lambda: Placement("drafter"))
    stages: tuple[Placement, ...] = ()
    verifier: Placement = field(default_factory=lambda: Placement("verifier"))
    scheduler: Placement = field(default_factory=lambda: Placement("scheduler"))
    draft_settings: DraftSettings = field(default_factory=DraftSettings)
    prefill_chunk: int = 64
    max_message_bytes: int = 64 * 2**20  # larger inbound messages are refused (ZeroMQ MAXMSGSIZE and decode)
    timeouts: Timeouts = field(default_factory=Timeouts)
    admission: Admission = field(default_factory=Admission)
    default_mode: str = "flowspec"  # for requests that name none (common.cluster.machine_defaults chooses it at `up`)
    # Draft nodes (roots included) of every request in flight together: each tree shrinks as the load grows
    # (common.speculation.budget); common.cluster.machine_defaults chooses it at `up`.
    speculation_budget: int = DEFAULT_TOTAL_NODES
    speculation_max_in_flight: int = 0  # with more requests in flight than this none speculates (0: no limit)
    curve: Curve = field(default_factory=Curve)

    @property
    def ring(self) -> list[Placement]:
        """Services on the data path, in ring order."""
        return [self.drafter, *self.stages, self.verifier]

    def placement(self, name: str) -> Placement:
        for p in (*self.ring, self.scheduler):
            if p.name == name:
                return p
        raise KeyError(f"no service named {name!r} in this cluster")

    def device_of(self, name: str) -> str:
        """The torch device service ``name`` runs on: its own, else the cluster's."""
        return self.placement(name).device or self.device

    def successor(self, name: str) -> Placement | None:
        ring = self.ring
        names = [p.name for p in ring]
        i = names.index(name)
        return ring[i + 1] if i + 1 < len(ring) else None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterSpec:
        raw = json.loads(text)
        curve = raw.get("curve", {})

        def place(d: dict[str, Any]) -> Placement:
            return Placement(**{**d, "layers": tuple(d.get("layers", (0, 0)))})

        return cls(
            **{k: v for k, v in raw.items() if k not in ("drafter", "stages", "verifier", "scheduler",
                                                         "draft_settings", "timeouts", "admission",
                                                         "curve")},
            drafter=place(raw["drafter"]),
            stages=tuple(place(s) for s in raw["stages"]),
            verifier=place(raw["verifier"]),
            scheduler=place(raw["scheduler"]),
            draft_settings=DraftSettings(**raw["draft_settings"]),
            timeouts=Timeouts(**raw["timeouts"]),
            admission=Admission(**raw.get("admission", {})),
            curve=Curve(**{**curve, "client_keys": tuple(curve.get("client_keys", ()))}),
        )

    @classmethod
    def load(cls, path: Path) -> ClusterSpec:
        return cls.from_json(path.read_text())
