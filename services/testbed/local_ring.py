"""All ring services in one process, wired by per-link FIFO queues.

Messages are delivered in a seeded random interleaving that respects each link's FIFO order, as a
network of PUSH/PULL sockets would, and the shared forwards take random turns among them: the drafter's
(every growing request's next draft level, drafting ahead), the stages' and the verifier's (every request's
waiting segments, :mod:`services.batch`): this exercises the epoch logic under arbitrary timing, fast and
reproducibly, with the very cores the real services run. ``after_each`` (if set) sees the ring after
every delivery and every drafting step.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

from common.cluster.partition import even_split
from common.cluster.settings import Admission
from common.cluster.spec_builder import ClusterRequest, build_spec
from common.models.dtypes import dtype_name
from common.models.modeling import load_model_spec
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateReply, GenerateRequest
from common.wire.codec import Message, decode, encode
from common.wire.errors import ProtocolError
from common.wire.reports import Fault, Ready
from services.batch import Forward
from services.cores import build_core
from services.scheduler.admission import Capacity
from services.scheduler.core import CLIENT, SchedulerCore
from services.scheduler.liveness import Liveness
from services.scheduler.replay import Replays, recover, restarted


class LocalRing:
    def __init__(
        self,
        base: Path,
        draft: Path | None,
        stages: int,
        *,
        settings: DraftSettings | None = None,
        admission: Admission | None = None,
        capacity: Capacity | None = None,
        interleave_seed: int = 0,
        dtype: torch.dtype = torch.float32,
        wire: bool = True,
        device: str = "cpu",
        draft_head: Path | None = None,
        draft_ids: torch.Tensor | None = None,
        prefill_chunk: int = 64,
    ) -> None:
        """``draft_head``: draft with this head (fed by the verifier's features) instead of ``draft``;
        ``draft_ids``: the draft model's reduced vocabulary."""
        model = load_model_spec(base)
        asked = ClusterRequest(base=str(base), draft=str(draft or ""), draft_head=str(draft_head or ""),
                               dtype=dtype_name(dtype), device=device, draft_settings=settings or DraftSettings(),
                               admission=admission or Admission())
        # The services' own construction (services/cores.py) from the spec they would read; no ports: no sockets.
        self.spec = build_spec(asked, even_split(model.num_layers, stages), lambda _: "local", lambda _: 0)
        self.stages = [build_core(self.spec, place.name) for place in self.spec.stages]
        self.verifier = build_core(self.spec, "verifier")
        self.drafter = build_core(self.spec, "drafter", draft_ids=draft_ids)
        names = ["drafter", *(s.name for s in self.stages), "verifier"]
        self.scheduler = SchedulerCore(names, None, model.eos_token_ids, self.spec.draft_settings, prefill_chunk,
                                       admission=admission, capacity=capacity)
        self._cores = {c.name: c for c in (self.drafter, *self.stages, self.verifier)}
        self._next = dict(zip(names[:-1], names[1:], strict=True))
        self._links: dict[tuple[str, str], deque[Message]] = {}
        self._random = random.Random(interleave_seed)
        self._wire = wire  # round-trip every message through the codec, as the sockets do
        self.delivered = 0
        self.forwards: dict[str, list[Forward]] = {c.name: [] for c in (self.drafter, *self.stages, self.verifier)}
        self.after_each: Callable[[LocalRing], None] | None = None
        self.received: dict[str, list[Message]] = {}  # client -> chunks and replies, in order
        self._clients = itertools.count()

    def generate(
        self, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, seed: int = 0, mode: str = "flowspec"
    ) -> GenerateReply:
        request = GenerateRequest(prompt="", prompt_ids=tuple(prompt), max_new_tokens=max_new_tokens,
                                  temperature=temperature, seed=seed, mode=mode)
        return self.generate_many([request])[0]

    def generate_many(self, requests: list[GenerateRequest]) -> list[GenerateReply]:
        """Submit every request at once and run the ring until each has its final reply."""
        clients = [self.submit(request) for request in requests]
        self.deliver(lambda: all(self.final(c) is not None for c in clients))
        return [self.final(c) for c in clients]

    def submit(self, request: GenerateRequest) -> str:
        """Hand ``request`` to the scheduler from a new client; returns the client's name."""
        client = f"{CLIENT}c{next(self._clients)}"
        self.received[client] = []
        self._route("scheduler", self.scheduler.submit(client, request))
        return client

    def cancel(self, client: str) -> None:
        self._route("scheduler", self.scheduler.cancel(client))

    def final(self, client: str) -> GenerateReply | None:
        replies = [m for m in self.received[client] if isinstance(m, GenerateReply)]
        return replies[0] if replies else None

    def deliver(self, until: Callable[[], bool]) -> None:
        """Deliver messages in a random FIFO-respecting interleaving until ``until()`` or the ring is quiet."""
        while not until():
            busy: list[tuple[str, str] | str] = [link for link, queue in self._links.items() if queue]
            busy += [name for name in self.forwards if self._cores[name].batch_ready()]  # a shared forward's turn
            if not busy:  # what the scheduler's request deadline does in a real cluster
                self._route("scheduler", self.scheduler.expire(float("inf"), 0.0))
                return
            link = self._random.choice(busy)
            if isinstance(link, str):
                self._batch(link)
                continue
            src, dst = link
            msg = self._links[(src, dst)].popleft()
            self.delivered += 1
            if dst == "scheduler":
                self._route(dst, self.scheduler.handle(msg))
                self._observe()
                continue
            core = self._cores[dst]
            try:
                outs = core.handle(msg)
            except ProtocolError as exc:  # what services/runtime.py does: fail the request, stay up
                core.drop_request(getattr(msg, "request_id", ""))
                outs = [("scheduler", Fault(dst, getattr(msg, "request_id", ""), str(exc)))]
            self._route(dst, outs)
            self._observe()

    def _batch(self, name: str) -> None:
        """What services/runtime.py does with a core's shared forward: fail the named requests, send the rest."""
        core = self._cores[name]
        outcome = core.run_batch()
        self.forwards[name] += outcome.forwards
        faults: list[tuple[str, Message]] = []
        for request_id, exc in outcome.failed:
            core.drop_request(request_id)
            faults.append(("scheduler", Fault(name, request_id, f"{type(exc).__name__}: {exc}")))
        self._route(name, faults + outcome.sends)
        self._observe()

    def batched(self, name: str) -> int:
        """Forwards of ``name`` that carried the rows of more than one request."""
        return sum(f.requests > 1 for f in self.forwards[name])

    def _observe(self) -> None:
        if self.after_each is not None:
            self.after_each(self)

    def held_requests(self) -> dict[str, set[str]]:
        """Request ids each core holds state for (the scheduler's: in the ring)."""
        held = {name: set(core.requests) for name, core in self._cores.items()}
        return {**held, "scheduler": set(self.scheduler.jobs)}

    def restart(self, name: str, now: float = 0.0) -> None:
        """What a SIGKILL and a supervisor's restart do to service ``name``: its state and every message on
        its way to it are lost; the scheduler hears its Ready under a new pid and replays each request."""
        core = self._cores[name]
        for request_id in list(core.requests):
            core.drop_request(request_id)
        for (_, dst), queue in self._links.items():
            if dst == name:
                queue.clear()
        liveness = Liveness(list(self._cores), timeout_s=3.0)
        for other in self._cores:
            liveness.hear(Ready(other, 1), now)
        replays = Replays(bound_s=30.0)
        self._route("scheduler", restarted(self.scheduler, replays, Ready(name, 2), 1, now))
        self._route("scheduler", recover(self.scheduler, liveness, replays, now))

    def inject(self, dst: str, msg: Message) -> None:
        """Queue a message for ``dst`` from outside the ring (a stray or forged packet)."""
        self._links.setdefault(("outside", dst), deque()).append(msg)

    def _route(self, src: str, outs: list[tuple[str, Message]]) -> None:
        for dest, msg in outs:
            if dest.startswith(CLIENT):
                self.received[dest].append(msg)
                continue
            if self._wire:
                msg = decode([bytes(f) for f in encode(msg)])
            dst = self._next[src] if dest == "next" else dest
            self._links.setdefault((src, dst), deque()).append(msg)
