"""All ring services in one process, wired by per-link FIFO queues.

Messages are delivered in a seeded random interleaving that respects each link's FIFO order, as a
network of PUSH/PULL sockets would: this exercises the epoch logic under arbitrary timing, fast and
reproducibly, with the very cores the real services run.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path

import torch

from common.drafting import TreeDrafter
from common.heads import HeadTreeDrafter, load_head
from common.heads.context import HeadContextDrafter
from common.modeling import load_model_spec, load_slice
from common.partition import even_split
from common.protocol import (
    DraftSettings,
    Fault,
    GenerateReply,
    GenerateRequest,
    Message,
    ProtocolError,
    decode,
    encode,
)
from services.drafter.core import DrafterCore
from services.scheduler.core import CLIENT, SchedulerCore
from services.stage.core import StageCore
from services.verifier.core import VerifierCore


class LocalRing:
    def __init__(
        self,
        base: Path,
        draft: Path | None,
        stages: int,
        *,
        settings: DraftSettings | None = None,
        interleave_seed: int = 0,
        dtype: torch.dtype = torch.float32,
        wire: bool = True,
        device: str = "cpu",
        draft_head: Path | None = None,
    ) -> None:
        """``draft_head``: draft with this head (fed by the verifier's features) instead of ``draft``."""
        spec = load_model_spec(base)
        ranges = even_split(spec.num_layers, stages)
        self.stages = [
            StageCore(f"stage-{i + 1}", load_slice(base, r, with_embedding=i == 0, with_head=False, dtype=dtype,
                                                   device=device))
            for i, r in enumerate(ranges)
        ]
        head = load_slice(base, (spec.num_layers, spec.num_layers), with_embedding=False, with_head=True, dtype=dtype,
                          device=device)
        self.verifier = VerifierCore("verifier", head, features_to="drafter" if draft_head else None)
        if draft_head is not None:
            drafter = HeadContextDrafter(HeadTreeDrafter(load_head(draft_head, base, dtype=dtype, device=device)))
        else:
            drafter = TreeDrafter(load_slice(draft, None, with_embedding=True, with_head=True, dtype=dtype,
                                             device=device))
        self.drafter = DrafterCore("drafter", drafter, hops=stages + 1)
        names = ["drafter", *(s.name for s in self.stages), "verifier"]
        self.scheduler = SchedulerCore(names, None, spec.eos_token_ids, settings or DraftSettings())
        self._cores = {c.name: c for c in (self.drafter, *self.stages, self.verifier)}
        self._next = dict(zip(names[:-1], names[1:], strict=True))
        self._links: dict[tuple[str, str], deque[Message]] = {}
        self._random = random.Random(interleave_seed)
        self._wire = wire  # round-trip every message through the codec, as the sockets do
        self.delivered = 0

    def generate(
        self, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, seed: int = 0, mode: str = "flowspec"
    ) -> GenerateReply:
        request = GenerateRequest(prompt="", prompt_ids=tuple(prompt), max_new_tokens=max_new_tokens,
                                  temperature=temperature, seed=seed, mode=mode)
        replies: list[GenerateReply] = []
        self._route("scheduler", self.scheduler.submit(CLIENT + "test", request), replies)
        while not replies:
            busy = [link for link, queue in self._links.items() if queue]
            if not busy:  # what the scheduler's request deadline does in a real cluster
                self._route("scheduler", self.scheduler.fail_current("timed out: the ring went quiet"), replies)
                break
            src, dst = self._random.choice(busy)
            msg = self._links[(src, dst)].popleft()
            self.delivered += 1
            if dst == "scheduler":
                self._route(dst, self.scheduler.handle(msg), replies)
                continue
            core = self._cores[dst]
            try:
                outs = core.handle(msg)
            except ProtocolError as exc:  # what services/runtime.py does: fail the request, stay up
                core.drop_request()
                outs = [("scheduler", Fault(dst, getattr(msg, "request_id", ""), str(exc)))]
            self._route(dst, outs, replies)
        return replies[0]

    def inject(self, dst: str, msg: Message) -> None:
        """Queue a message for ``dst`` from outside the ring (a stray or forged packet)."""
        self._links.setdefault(("outside", dst), deque()).append(msg)

    def _route(self, src: str, outs: list[tuple[str, Message]], replies: list[GenerateReply]) -> None:
        for dest, msg in outs:
            if dest.startswith(CLIENT):
                replies.append(msg)
                continue
            if self._wire:
                msg = decode([bytes(f) for f in encode(msg)])
            dst = self._next[src] if dest == "next" else dest
            self._links.setdefault((src, dst), deque()).append(msg)
