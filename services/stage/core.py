"""A pipeline stage: one slice of the base model's layers and its KV cache, as a state machine.

Per-request state is found by request id, so segments of several requests interleave; each request
has its own KV cache (from a small pool), laid out as
``[committed context : committed][tree nodes 0 .. tree_rows-1]``. Segments arrive in tree-index
order and prune events are applied in epoch order, so the tree region always holds nodes
``0 .. tree_rows-1`` of the current numbering. A segment waits only for the prune events
of its own epoch (the drafter had applied them before drafting it), never for a global step.

Arrived segments wait for :meth:`StageCore.run_batch`, which the service loop calls once it has
handled every message that arrived: the next ready segment of every request then goes through the
slice in one forward (:func:`common.models.modeling.batch.forward_many`), each request's rows over
its own cache, bitwise as if alone.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from common.models.modeling import KVCache, ModelSlice, causal_attend
from common.models.modeling.batch import Rows, forward_many
from common.models.modeling.cache_pool import CachePool
from common.observability import trace
from common.speculation.tree_mask import TreeMask
from common.wire.codec import Message
from common.wire.commands import EndRequest, Prune, StartRequest
from common.wire.ordering import OrderError, PruneLog, SequenceCheck
from common.wire.reports import StageStats
from common.wire.request_table import RequestTable
from common.wire.ring import Phase, Segment
from services.batch import Batched, Forward, Outbound


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
    busy_s: float = 0.0  # its share of the forwards it rode in, by rows
    forwards: int = 0
    rows: int = 0

    @property
    def tree_rows(self) -> int:
        return self.mask.size

    @property
    def ready(self) -> bool:
        """Whether its next segment may be forwarded (the prune events of its epoch are applied)."""
        return bool(self.waiting) and self.waiting[0].epoch <= self.log.epoch


@dataclass(frozen=True)
class _Part:
    """One request's segment planned for the next forward; ``finish`` makes the outgoing segment."""

    req: _Request
    rows: Rows
    finish: Callable[[torch.Tensor], Segment]


class StageCore:
    """``reserve_kv`` (default: on any device but the CPU): a request's cache gets room at its start for its
    prompt, its new tokens and the largest draft tree, so no forward reallocates it."""

    def __init__(self, name: str, model: ModelSlice, reserve_kv: bool | None = None) -> None:
        self.name = name
        self._model = model
        self._reserve_kv = model.device.type != "cpu" if reserve_kv is None else reserve_kv
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
        """Take a message; segments wait for :meth:`run_batch`."""
        if isinstance(msg, StartRequest):
            cache = self._caches.take()
            if self._reserve_kv:
                cache.reserve(len(msg.prompt) + msg.max_new_tokens + msg.draft.node_cap + msg.draft.segment_cap)
            early = self._requests.start(msg.request_id, _Request(msg.request_id, cache))
            return [out for m in early for out in self.handle(m)]
        req = self._requests.route(msg)
        if req is None:
            return []  # held until its start, or a message of an ended request still in flight
        if isinstance(msg, EndRequest):
            self._release(req.request_id)
            return [("scheduler", StageStats(self.name, req.request_id, req.busy_s * 1e3, req.forwards, req.rows))]
        if isinstance(msg, Prune):
            with trace.span("prune"):
                self._apply_prune(req, msg)
        elif isinstance(msg, Segment):
            req.segments.check(msg.seq)
            req.waiting.append(msg)
        else:
            raise OrderError(f"{self.name} does not handle {msg.KIND} messages")
        return []

    def batch_ready(self) -> bool:
        """Whether a request has a segment ready to forward."""
        return any(req.ready for req in self._requests.active.values())

    def run_batch(self) -> Batched:
        """One forward over the next ready segment of every request that has one (in the order they started)."""
        out = Batched()
        parts: list[_Part] = []
        for req in [r for r in self._requests.active.values() if r.ready]:
            seg = req.waiting.popleft()
            try:
                part = self._plan(req, seg)
            except Exception as exc:  # this request's segment is at fault: it fails alone
                out.fail([req.request_id], exc)
                continue
            if isinstance(part, Segment):
                out.sends.append(("next", part))  # every row was pruned on its way: nothing to forward
            else:
                parts.append(part)
        if parts:
            self._forward(parts, out)
        return out

    def _forward(self, parts: list[_Part], out: Batched) -> None:
        started, started_ns = time.perf_counter(), trace.now_ns()
        try:
            hidden = forward_many(self._model, [p.rows for p in parts])
        except Exception as exc:  # a shared forward failed: none of its requests can go on
            out.fail([p.req.request_id for p in parts], exc)
            return
        elapsed, ended_ns = time.perf_counter() - started, trace.now_ns()
        total = sum(h.shape[0] for h in hidden)
        for part, rows in zip(parts, hidden, strict=True):
            req = part.req
            trace.record("forward", req.request_id, started_ns, ended_ns)
            req.busy_s += elapsed * rows.shape[0] / total
            req.forwards += 1
            req.rows += rows.shape[0]
            out.sends.append(("next", part.finish(rows)))
        out.forwards.append(Forward(len(parts), total))

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

    def _plan(self, req: _Request, seg: Segment) -> _Part | Segment:
        """``seg``'s rows for the next forward, or (nothing left to forward) the segment to pass on."""
        return self._prefill(req, seg) if seg.phase is Phase.PREFILL else self._tree(req, seg)

    def _prefill(self, req: _Request, seg: Segment) -> _Part:
        if req.tree_rows or req.cache.length != seg.first:
            raise OrderError(f"prefill rows at {seg.first} but the cache holds {req.cache.length}")
        rows = Rows(self._inputs(seg, list(range(seg.rows))), torch.tensor(seg.positions, dtype=torch.long),
                    causal_attend(req.cache.length, seg.rows), req.cache)

        def finish(hidden: torch.Tensor) -> Segment:
            req.committed = req.cache.length
            return replace(seg, epoch=req.log.epoch, hidden=hidden)

        return _Part(req, rows, finish)

    def _tree(self, req: _Request, seg: Segment) -> _Part | Segment:
        now = req.log.bring_forward(seg.epoch, seg.first, seg.parents)
        if not now.rows:
            return replace(seg, epoch=req.log.epoch, first=0, tokens=(), parents=(), positions=(), hidden=None)
        if now.first != req.tree_rows:
            raise OrderError(f"segment starts at node {now.first}, this stage holds {req.tree_rows} tree nodes")
        kept = list(now.rows)
        n = len(kept)
        inputs = self._inputs(seg, kept)
        tree = req.mask.append(now.parents)  # [n, t + n]
        req.parents += now.parents
        # Rows that see every cached node need no mask at all (autoregressive steps, chains).
        attend = None if bool(tree.all()) else torch.cat((torch.ones(n, req.committed, dtype=torch.bool), tree), 1)
        rows = Rows(inputs, torch.tensor([seg.positions[r] for r in kept], dtype=torch.long), attend, req.cache)
        epoch = req.log.epoch

        def finish(hidden: torch.Tensor) -> Segment:
            return replace(seg, epoch=epoch, first=now.first, tokens=tuple(seg.tokens[r] for r in kept),
                           parents=now.parents, positions=tuple(seg.positions[r] for r in kept), hidden=hidden)

        return _Part(req, rows, finish)

    def _inputs(self, seg: Segment, rows: list[int]) -> torch.Tensor:
        if self._model.with_embedding:
            return torch.tensor([seg.tokens[r] for r in rows], dtype=torch.long)
        if seg.hidden is None:
            raise OrderError(f"{self.name} needs hidden states but the segment carries none")
        return seg.hidden if len(rows) == seg.rows else seg.hidden[rows]
