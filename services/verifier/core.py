"""The verifier: the base model's final norm and lm_head, and the acceptance decision.

Logits are computed soon after a segment arrives (the costly part, overlapping the drafter's
expansion): once the service loop has handled every message that arrived, :meth:`VerifierCore.run_batch`
computes them for every waiting segment of every request in one head call (greedy requests' argmax ids
in one, sampling requests' logits in another; the head's rows are row-invariant, so each row is bitwise
what it is alone). The decision waits only for the prune event that the previous verdict caused, so
that the segment's nodes are numbered as the scheduler's tree is. For a draft head it also sends the
drafter the final-normed hidden states of the prompt and of every accepted path (``Features``).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from common.models.modeling import ModelSlice
from common.observability import trace
from common.speculation.modes import Mode
from common.speculation.verification import accept_greedy_ids, accept_sampling, sample_token
from common.wire.codec import Message
from common.wire.commands import EndRequest, Prune, StartRequest
from common.wire.ordering import OrderError, PruneLog, SequenceCheck
from common.wire.reports import StageStats, Verdict, VerdictKind
from common.wire.request_table import RequestTable
from common.wire.ring import Features, Phase, Segment
from services.batch import Batched, Forward, Outbound


def _present(t: torch.Tensor | None) -> torch.Tensor:
    """``t``, where the verifier's own bookkeeping guarantees it was set."""
    assert t is not None, "a tensor the verifier computed or received is missing"
    return t


@dataclass
class _Waiting:
    """An arrived segment, the hidden rows the head needs for it, and then its verdict input."""

    seg: Segment
    rows: torch.Tensor | None  # [n, H]: all its rows, a last prefill chunk's last; None: nothing to compute
    logits: torch.Tensor | None = None  # argmax ids [n] when greedy, else logits [n, vocab]

    @property
    def pending(self) -> bool:
        """Whether its rows wait for the next head call."""
        return self.rows is not None and self.logits is None


@dataclass
class _Request:
    request_id: str
    temperature: float
    seed: int  # with each sampled token's position, the key of its draw (common.speculation.verification)
    log: PruneLog = field(default_factory=PruneLog)
    segments: SequenceCheck = field(default_factory=lambda: SequenceCheck("segment"))
    waiting: deque[_Waiting] = field(default_factory=deque)
    awaiting_epoch: int = 0  # the epoch the last verdict will create; decide nothing before it
    mode: Mode = Mode.FLOWSPEC
    gathered: list[tuple[Segment, torch.Tensor]] = field(default_factory=list)  # chunk mode: the round's tree
    busy_s: float = 0.0  # feature norms, and its share of the head calls it rode in, by rows
    forwards: int = 0
    rows: int = 0
    features: list[Outbound] = field(default_factory=list)  # Features to send with the next decisions
    feature_bytes: int = 0


class VerifierCore:
    def __init__(self, name: str, head: ModelSlice, features_to: str | None = None) -> None:
        assert head.with_head
        self.name = name
        self._head = head
        self._features_to = features_to  # the drafter, when it drafts with a head over base features
        self._requests: RequestTable[_Request] = RequestTable()

    @property
    def requests(self) -> dict[str, _Request]:
        """The requests this verifier holds state for, by id."""
        return self._requests.active

    def drop_request(self, request_id: str) -> None:
        """Forget a request after a fault; its later messages are dropped."""
        self._requests.end(request_id)

    def handle(self, msg: Message) -> list[Outbound]:
        if isinstance(msg, StartRequest):
            new = _Request(msg.request_id, msg.temperature, msg.seed, mode=msg.mode)
            return [out for early in self._requests.start(msg.request_id, new) for out in self.handle(early)]
        req = self._requests.route(msg)
        if req is None:
            return []
        if isinstance(msg, EndRequest):
            self._requests.end(req.request_id)
            return [("scheduler", StageStats(self.name, req.request_id, req.busy_s * 1e3, req.forwards, req.rows,
                                             feature_bytes=req.feature_bytes))]
        if isinstance(msg, Prune):
            req.log.record(msg)
        elif isinstance(msg, Segment):
            req.segments.check(msg.seq)
            req.waiting.append(_Waiting(msg, _head_rows(msg)))
            if msg.phase is Phase.PREFILL and msg.rows:
                self._send_features(req, msg.positions[0], msg.hidden)
        else:
            raise OrderError(f"{self.name} does not handle {msg.KIND} messages")
        return self._decide(req)

    def batch_ready(self) -> bool:
        """Whether a segment waits for its logits."""
        return any(entry.pending for req in self._requests.active.values() for entry in req.waiting)

    def run_batch(self) -> Batched:
        """The logits of every waiting segment, one head call per kind (greedy ids, sampling logits); decisions."""
        out = Batched()
        todo: dict[bool, list[tuple[_Request, _Waiting]]] = {False: [], True: []}
        for req in self._requests.active.values():
            todo[req.temperature > 0] += [(req, entry) for entry in req.waiting if entry.pending]
        for sampling, items in todo.items():
            if items:
                self._head_call(items, sampling, out)
        failed = {request_id for request_id, _ in out.failed}
        for req in list(self._requests.active.values()):
            if req.request_id in failed:
                continue
            try:
                with trace.bound(req.request_id):  # its verify spans
                    out.sends += self._decide(req)
            except Exception as exc:  # a decision that cannot be made concerns its request only
                out.fail([req.request_id], exc)
        return out

    def _head_call(self, items: list[tuple[_Request, _Waiting]], sampling: bool, out: Batched) -> None:
        """One call of the head over the rows of ``items``; each entry gets its own rows' result."""
        started, started_ns = time.perf_counter(), trace.now_ns()
        requests = list(dict.fromkeys(req.request_id for req, _ in items))
        try:  # acceptance and its RNG run on the CPU: only what they need leaves the device
            hidden = torch.cat([_present(entry.rows).to(self._head.device, self._head.dtype) for _, entry in items])  # [N, H]
            result = (self._head.logits(hidden) if sampling else self._head.greedy_tokens(hidden)).cpu()
        except Exception as exc:  # a failed head call: none of its requests can go on
            out.fail(requests, exc)
            return
        elapsed, ended_ns = time.perf_counter() - started, trace.now_ns()
        total, start = hidden.shape[0], 0
        for req, entry in items:
            n = _present(entry.rows).shape[0]
            entry.logits = result[start : start + n]
            start += n
            trace.record("forward", req.request_id, started_ns, ended_ns)
            req.busy_s += elapsed * n / total
            req.forwards += 1
            req.rows += n
        out.forwards.append(Forward(len(requests), total))

    def _decide(self, req: _Request) -> list[Outbound]:
        out: list[Outbound] = []
        while req.waiting:
            entry = req.waiting[0]
            seg = entry.seg
            if entry.pending or req.log.epoch < max(seg.epoch, req.awaiting_epoch):
                break
            req.waiting.popleft()
            if seg.round < req.log.round:
                continue  # in flight when its round ended: nobody waits for it
            with trace.span("verify"):
                verdict = self._verdict(req, seg, entry.logits)
            if verdict is not None:
                out.append(("scheduler", verdict))
        out, req.features = [*req.features, *out], []
        return out

    def _verdict(self, req: _Request, seg: Segment, logits: torch.Tensor | None) -> Verdict | None:
        base: dict[str, Any] = {"request_id": req.request_id, "seq": seg.seq, "round": req.log.round,
                                "epoch": req.log.epoch}
        if seg.phase is Phase.PREFILL:
            if not seg.last_prefill:
                return None
            req.awaiting_epoch = req.log.epoch + 1
            last = _present(logits)[-1]
            token = sample_token(last, req.temperature, req.seed, seg.positions[-1] + 1) if req.temperature > 0 \
                else int(last)
            return Verdict(**base, kind=VerdictKind.PREFILL, next_token=token, rows=seg.rows)
        now = req.log.bring_forward(seg.epoch, seg.first, seg.parents)
        if not now.rows:
            return Verdict(**base, kind=VerdictKind.NOOP)
        logits = _present(logits)  # a segment with rows to verify had them computed
        if req.mode.verifies_whole_tree:  # Chunk-PP: gather the round's segments, verify the tree whole
            req.gathered.append((seg, logits))
            if not seg.closes_tree:
                return None
            parts, req.gathered = req.gathered, []
            seg = replace(parts[0][0], tokens=sum((p.tokens for p, _ in parts), ()),
                          parents=sum((p.parents for p, _ in parts), ()),
                          hidden=None if parts[0][0].hidden is None else torch.cat([_present(p.hidden) for p, _ in parts]),
                          positions=sum((p.positions for p, _ in parts), ()))
            logits = torch.cat([lg for _, lg in parts])
            now = req.log.bring_forward(seg.epoch, seg.first, seg.parents)
        if now.first != 0:
            raise OrderError(f"verified segment starts at node {now.first}, not at the root")
        rows = list(now.rows)
        tokens = [seg.tokens[r] for r in rows]
        picked = logits[rows] if len(rows) != seg.rows else logits
        if req.temperature > 0:
            decision = accept_sampling(tokens, now.parents, picked, req.temperature, req.seed, seg.positions[rows[0]])
        else:
            decision = accept_greedy_ids(tokens, now.parents, picked.tolist())
        req.awaiting_epoch = req.log.epoch + 1
        self._send_features(req, seg.positions[rows[0]], seg.hidden, [rows[i] for i in decision.path])
        return Verdict(
            **base,
            kind=VerdictKind.TREE,
            accepted=decision.path,
            accepted_tokens=tuple(tokens[i] for i in decision.path),
            next_token=decision.next_token,
            rows=len(rows),
        )

    def _send_features(self, req: _Request, position: int, hidden: torch.Tensor | None,
                       rows: list[int] | None = None) -> None:
        """Queue the final-normed ``hidden`` rows (all, or ``rows``) of committed tokens for the drafter's head."""
        if self._features_to is None or not req.mode.drafts:
            return
        if hidden is None:
            raise OrderError("the verifier received a segment without hidden states")
        hidden = hidden if rows is None else hidden[rows]
        started = time.perf_counter()
        assert self._head.norm is not None, "the verifier's slice has the head"
        with torch.no_grad():
            normed = self._head.norm(hidden.to(self._head.device, self._head.dtype)).cpu()  # [rows, H]
        req.busy_s += time.perf_counter() - started
        req.feature_bytes += normed.numel() * normed.element_size()
        req.features.append((self._features_to, Features(req.request_id, position, normed)))


def _head_rows(seg: Segment) -> torch.Tensor | None:
    """The hidden rows whose head output decides ``seg`` (a last prefill chunk: its last row), or None."""
    if seg.rows == 0 or (seg.phase == "prefill" and not seg.last_prefill):
        return None
    if seg.hidden is None:
        raise OrderError("the verifier received a segment without hidden states")
    return seg.hidden[-1:] if seg.phase == "prefill" else seg.hidden
