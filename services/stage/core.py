"""A pipeline stage: one slice of the base model's layers and its KV cache, as a state machine.

Per-request state is found by request id, so segments of several requests interleave; each request
has its own KV cache (from a small pool), laid out as
``[committed context : committed][tree nodes 0 .. tree_rows-1]``. Segments arrive in tree-index
order and prune events are applied in epoch order, so the tree region always holds nodes
``0 .. tree_rows-1`` of the current numbering. A segment waits only for the prune events
of its own epoch (the drafter had applied them before drafting it), never for a global step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace

import torch

from common.models.modeling import KVCache, ModelSlice, causal_attend
from common.models.modeling.cache_pool import CachePool
from common.observability.trace import span
from common.speculation.tree_mask import TreeMask
from common.wire.codec import Message
from common.wire.commands import EndRequest, Prune, StartRequest
from common.wire.ordering import OrderError, PruneLog, SequenceCheck
from common.wire.reports import StageStats
from common.wire.request_table import RequestTable
from common.wire.ring import Phase, Segment

Outbound = tuple[str, Message]  # (destination, message): "next" is the ring successor


@dataclass
class _Request:
    request_id: str
    cache: KVCache
    log: PruneLog = field(default_factory=PruneLog)
    segments: SequenceCheck = field(default_factory=lambda: SequenceCheck("segment"))
    committed: int = 0
    mask: TreeMask = field(default_factory=TreeMask)  # tree attention of the cached tree nodes
    parents: list[int] = field(default_factory=list)  # parent of each cached tree node
    waiting: deque[Segment] = field(default_factory=deque)
    busy_s: float = 0.0
    forwards: int = 0
    rows: int = 0

    @property
    def tree_rows(self) -> int:
        return self.mask.size


class StageCore:
    def __init__(self, name: str, model: ModelSlice) -> None:
        self.name = name
        self._model = model
        self._requests: RequestTable[_Request] = RequestTable()
        self._caches = CachePool(model.new_cache)  # reused across requests: no reallocation per request

    @property
    def requests(self) -> dict[str, _Request]:
        """The requests this stage holds state for, by id."""
        return self._requests.active

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes allocated by the KV caches of the requests this stage holds."""
        return sum(req.cache.nbytes for req in list(self._requests.active.values()))  # read from the heartbeat thread

    def drop_request(self, request_id: str) -> None:
        """Forget a request after a fault; its later messages are dropped."""
        self._release(request_id)

    def handle(self, msg: Message) -> list[Outbound]:
        if isinstance(msg, StartRequest):
            early = self._requests.start(msg.request_id, _Request(msg.request_id, self._caches.take()))
            return [out for m in early for out in self.handle(m)]
        req = self._requests.route(msg)
        if req is None:
            return []  # held until its start, or a message of an ended request still in flight
        if isinstance(msg, EndRequest):
            self._release(req.request_id)
            stats = StageStats(self.name, req.request_id, req.busy_s * 1e3, req.forwards, req.rows)
            return [("scheduler", stats)]
        if isinstance(msg, Prune):
            with span("prune"):
                self._apply_prune(req, msg)
        elif isinstance(msg, Segment):
            req.segments.check(msg.seq)
            req.waiting.append(msg)
        else:
            raise OrderError(f"{self.name} does not handle {msg.KIND} messages")
        out: list[Outbound] = []
        while req.waiting and req.waiting[0].epoch <= req.log.epoch:
            out.append(("next", self._process(req, req.waiting.popleft())))
        return out

    def _release(self, request_id: str) -> None:
        req = self._requests.end(request_id)
        if req is not None:
            self._caches.give(req.cache)

    def _apply_prune(self, req: _Request, event: Prune) -> None:
        req.log.record(event)
        if any(a >= req.tree_rows for a in event.accepted):
            raise OrderError(f"prune epoch {event.epoch} accepts nodes this stage has not computed")
        now = req.log.bring_forward(event.epoch - 1, 0, req.parents)
        in_cache, req.parents = list(now.rows), list(now.parents)
        g = req.committed
        rows = [g + a for a in event.accepted] + [g + k for k in in_cache]
        req.cache.keep(torch.tensor(rows, dtype=torch.long), start=g)  # the committed prefix stays put
        req.mask.keep(in_cache)
        req.committed = g + len(event.accepted)

    def _process(self, req: _Request, seg: Segment) -> Segment:
        started = time.perf_counter()
        out = self._prefill(req, seg) if seg.phase is Phase.PREFILL else self._tree(req, seg)
        req.busy_s += time.perf_counter() - started
        return out

    def _prefill(self, req: _Request, seg: Segment) -> Segment:
        if req.tree_rows or req.cache.length != seg.first:
            raise OrderError(f"prefill rows at {seg.first} but the cache holds {req.cache.length}")
        inputs = self._inputs(seg, list(range(seg.rows)))
        positions = torch.tensor(seg.positions, dtype=torch.long)
        with span("forward"):
            hidden = self._model(inputs, positions, causal_attend(req.cache.length, seg.rows), req.cache)
        req.committed = req.cache.length
        req.forwards += 1
        req.rows += seg.rows
        return replace(seg, epoch=req.log.epoch, hidden=hidden)

    def _tree(self, req: _Request, seg: Segment) -> Segment:
        now = req.log.bring_forward(seg.epoch, seg.first, seg.parents)
        if not now.rows:
            return replace(seg, epoch=req.log.epoch, first=0, tokens=(), parents=(), positions=(), hidden=None)
        if now.first != req.tree_rows:
            raise OrderError(f"segment starts at node {now.first}, this stage holds {req.tree_rows} tree nodes")
        rows = list(now.rows)
        n = len(rows)
        tree = req.mask.append(now.parents)  # [n, t + n]
        req.parents += now.parents
        # Rows that see every cached node need no mask at all (autoregressive steps, chains).
        attend = None if bool(tree.all()) else torch.cat((torch.ones(n, req.committed, dtype=torch.bool), tree), 1)
        positions = torch.tensor([seg.positions[r] for r in rows], dtype=torch.long)
        with span("forward"):
            hidden = self._model(self._inputs(seg, rows), positions, attend, req.cache)
        req.forwards += 1
        req.rows += n
        return replace(
            seg,
            epoch=req.log.epoch,
            first=now.first,
            tokens=tuple(seg.tokens[r] for r in rows),
            parents=now.parents,
            positions=tuple(seg.positions[r] for r in rows),
            hidden=hidden,
        )

    def _inputs(self, seg: Segment, rows: list[int]) -> torch.Tensor:
        if self._model.with_embedding:
            return torch.tensor([seg.tokens[r] for r in rows], dtype=torch.long)
        if seg.hidden is None:
            raise OrderError(f"{self.name} needs hidden states but the segment carries none")
        return seg.hidden if len(rows) == seg.rows else seg.hidden[rows]
