"""The drafter: head of the ring. Streams the prompt, then draft-tree segments, into stage 1.

It mirrors the scheduler's tree by applying the same prune events. On every Expand it drafts from
the current root: a new round gets a fill tree cut into one segment per pipeline hop; a running round
gets a fresh draft merged into the surviving tree, and only the nodes the tree lacked are sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from common.drafting import TreeDrafter, TreeShape
from common.ordering import EarlyMessages, OrderError, PruneLog
from common.protocol import (
    DraftReport,
    DraftSettings,
    EndRequest,
    Expand,
    Message,
    Prune,
    Segment,
    StartRequest,
)
from common.tree import DraftTree, merge_trees, prune_tree, segment_sizes

Outbound = tuple[str, Message]
MAX_GROWTH = 2  # an idle expansion drafts up to 3x the nodes, deeper, to find nodes the tree lacks


@dataclass
class _Request:
    request_id: str
    draft: DraftSettings
    root: int = -1
    pending: list[int] = field(default_factory=list)  # committed tokens not yet in the draft cache
    tree: DraftTree | None = None  # None between rounds
    log: PruneLog = field(default_factory=PruneLog)
    seq: int = 0
    idle_expands: int = 0  # Expands since the last prune: grow the draft to find new nodes


class DrafterCore:
    def __init__(self, name: str, drafter: TreeDrafter, hops: int) -> None:
        self.name = name
        self._drafter = drafter
        self._hops = hops  # stages + verifier: segments a fill keeps in flight
        self._request: _Request | None = None
        self._early = EarlyMessages()

    def drop_request(self) -> None:
        """Forget the current request after a fault; the next StartRequest begins afresh."""
        self._request = None

    def handle(self, msg: Message) -> list[Outbound]:
        if isinstance(msg, StartRequest):
            out = self._start(msg)
            for early in self._early.release(msg.request_id):
                out += self.handle(early)
            return out
        req = self._request
        if req is None or getattr(msg, "request_id", None) != req.request_id:
            self._early.hold(msg)
            return []
        if isinstance(msg, EndRequest):
            self._request = None
            return []
        if isinstance(msg, Prune):
            req.log.record(msg)
            req.pending.extend(msg.new_tokens)
            req.root = msg.next_token
            req.tree = None if msg.ends_round else prune_tree(req.tree, msg.keep)
            req.idle_expands = 0
            return []
        if isinstance(msg, Expand):
            if msg.epoch != req.log.epoch:
                raise OrderError(f"expand for epoch {msg.epoch} while at epoch {req.log.epoch}")
            return self._expand(req)
        raise OrderError(f"{self.name} does not handle {msg.KIND} messages")

    def _start(self, msg: StartRequest) -> list[Outbound]:
        req = self._request = _Request(msg.request_id, msg.draft)
        self._drafter.reset()
        prompt = list(msg.prompt)
        out: list[Outbound] = []
        for start in range(0, len(prompt), msg.prefill_chunk):
            chunk = prompt[start : start + msg.prefill_chunk]
            last = start + msg.prefill_chunk >= len(prompt)
            out.append(("next", self._segment(req, "prefill", start, chunk, (), range(start, start + len(chunk)), last)))
        req.pending = prompt  # drafted into the cache while the base model prefills
        return out

    def prefill_draft_context(self) -> None:
        """Feed committed tokens to the draft model (called by the shell after sending, to overlap)."""
        req = self._request
        if req is not None and req.pending:
            self._drafter.extend_context(req.pending)
            req.pending = []

    def _expand(self, req: _Request) -> list[Outbound]:
        started = time.perf_counter()
        self.prefill_draft_context()
        settings = req.draft
        out: list[Outbound] = []
        if req.tree is None:
            shape = TreeShape(settings.fill_nodes, settings.fill_depth, settings.top_k)
            req.tree = self._drafter.draft(req.root, shape)
            first = 0
            sizes = segment_sizes(len(req.tree), settings.fill_segments or self._hops, settings.segment_cap)
        else:
            grow = min(req.idle_expands, MAX_GROWTH)
            shape = TreeShape(settings.expand_nodes * (1 + grow), settings.expand_depth + grow, settings.top_k)
            req.tree, first = merge_trees(req.tree, self._drafter.draft(req.root, shape))
            sizes = [len(req.tree) - first]
            req.idle_expands += 1
        tree = req.tree
        depths = tree.depths()
        root_pos = self._drafter.context_length - 1
        start = first
        for size in sizes:
            nodes = range(start, start + size)
            out.append((
                "next",
                self._segment(
                    req, "tree", start, [tree.tokens[i] for i in nodes], [tree.parents[i] for i in nodes],
                    [root_pos + depths[i] for i in nodes], False,
                ),
            ))
            start += size
        report = DraftReport(
            request_id=req.request_id, epoch=req.log.epoch, first=first,
            tokens=tree.tokens[first:], parents=tree.parents[first:], segments_sent=len(out),
            draft_ms=(time.perf_counter() - started) * 1e3,
        )
        return [*out, ("scheduler", report)]

    def _segment(self, req, phase, first, tokens, parents, positions, last) -> Segment:
        seg = Segment(
            request_id=req.request_id, round=req.log.round, epoch=req.log.epoch, seq=req.seq, phase=phase,
            first=first, tokens=tuple(tokens), parents=tuple(parents), positions=tuple(positions),
            last_prefill=last,
        )
        req.seq += 1
        return seg
