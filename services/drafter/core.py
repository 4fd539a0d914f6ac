"""The drafter: head of the ring. Streams the prompt, then draft-tree segments, into stage 1.

It mirrors the scheduler's tree by applying the same prune events. On every Expand it drafts from
the current root: a new round gets a fill tree cut into one segment per pipeline hop; a running round
gets a fresh draft merged into the surviving tree, and only the nodes the tree lacked are sent.
With a draft head the base's features of committed tokens arrive from the verifier (``Features``);
an Expand that needs features not yet arrived waits for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from common.drafting import TreeDrafter, TreeShape
from common.heads.context import HeadContextDrafter
from common.observability.trace import span
from common.ordering import OrderError, PruneLog
from common.protocol import (
    DraftReport,
    DraftSettings,
    EndRequest,
    Expand,
    Features,
    Message,
    Prune,
    Segment,
    StageStats,
    StartRequest,
)
from common.request_table import RequestTable
from common.tree import DraftTree, merge_trees, prune_tree, segment_sizes, single_root

Outbound = tuple[str, Message]
Drafter = TreeDrafter | HeadContextDrafter
MAX_GROWTH = 2  # an idle expansion drafts up to 3x the nodes, deeper, to find nodes the tree lacks


@dataclass
class _Request:
    request_id: str
    draft: DraftSettings
    drafter: Drafter  # the shared draft model (or head) over this request's own context cache
    root: int = -1
    pending: list[int] = field(default_factory=list)  # committed tokens not yet in the draft cache
    tree: DraftTree | None = None  # None between rounds
    mode: str = "flowspec"
    context_length: int = 0  # prompt and output tokens, the root included
    log: PruneLog = field(default_factory=PruneLog)
    seq: int = 0
    idle_expands: int = 0  # Expands since the last prune: grow the draft to find new nodes
    busy_s: float = 0.0  # drafting time: expansions and context passes
    expansions: int = 0
    nodes: int = 0  # tree nodes sent
    expand_waiting: bool = False  # an Expand waits for the base features it needs (draft head)


class Drafters(Protocol):
    """Where each request's drafter comes from: a draft model's or a draft head's, over a cache of its own."""

    def take(self) -> Drafter: ...

    def give(self, drafter: Drafter) -> None: ...


class DrafterCore:
    def __init__(self, name: str, drafters: Drafters, hops: int) -> None:
        self.name = name
        self._drafters = drafters
        self._hops = hops  # stages + verifier: segments a fill keeps in flight
        self._requests: RequestTable[_Request] = RequestTable()

    @property
    def requests(self) -> dict[str, _Request]:
        """The requests this drafter holds state for, by id."""
        return self._requests.active

    def drop_request(self, request_id: str) -> None:
        """Forget a request after a fault; its later messages are dropped."""
        self._release(request_id)

    def handle(self, msg: Message) -> list[Outbound]:
        if isinstance(msg, StartRequest):
            out, early = self._start(msg)
            for m in early:
                out += self.handle(m)
            return out
        req = self._requests.route(msg)
        if req is None:
            return []
        if isinstance(msg, EndRequest):
            self._release(req.request_id)
            return [("scheduler", StageStats(self.name, req.request_id, req.busy_s * 1e3, req.expansions, req.nodes))]
        if isinstance(msg, Prune):
            req.log.record(msg)
            if req.mode != "ar":  # ar never drafts, so the draft model needs no context
                req.pending.extend(msg.new_tokens)
            req.context_length += len(msg.new_tokens)
            req.root = msg.next_token
            req.tree = None if msg.ends_round else prune_tree(req.tree, msg.keep)
            req.idle_expands = 0
            return []
        if isinstance(msg, Features):
            if not isinstance(req.drafter, HeadContextDrafter):
                raise OrderError(f"{self.name} drafts with a model, not a head: it takes no features")
            req.drafter.add_features(msg.position, msg.hidden)
            return self._expand_if_ready(req) if req.expand_waiting else []
        if isinstance(msg, Expand):
            if msg.epoch != req.log.epoch:
                raise OrderError(f"expand for epoch {msg.epoch} while at epoch {req.log.epoch}")
            req.expand_waiting = True
            return self._expand_if_ready(req)
        raise OrderError(f"{self.name} does not handle {msg.KIND} messages")

    def _release(self, request_id: str) -> None:
        req = self._requests.end(request_id)
        if req is not None:
            self._drafters.give(req.drafter)

    def _start(self, msg: StartRequest) -> tuple[list[Outbound], list[Message]]:
        req = _Request(msg.request_id, msg.draft, self._drafters.take(), mode=msg.mode, context_length=len(msg.prompt))
        early = self._requests.start(msg.request_id, req)
        prompt = list(msg.prompt)
        out: list[Outbound] = []
        for start in range(0, len(prompt), msg.prefill_chunk):
            chunk = prompt[start : start + msg.prefill_chunk]
            last = start + msg.prefill_chunk >= len(prompt)
            out.append(("next", self._segment(req, "prefill", start, chunk, (), range(start, start + len(chunk)), last)))
        req.pending = prompt  # drafted into the cache while the base model prefills
        return out, early

    def prefill_draft_context(self) -> None:
        """Feed committed tokens to the draft model (called by the shell after sending, to overlap)."""
        for req in self._requests.active.values():
            if req.pending and req.mode != "ar":
                started = time.perf_counter()
                with span("draft", req.request_id):
                    self._extend_context(req)
                req.busy_s += time.perf_counter() - started

    def _extend_context(self, req: _Request) -> None:
        if req.pending and req.mode != "ar":
            req.drafter.extend_context(req.pending)
            req.pending = []

    def _expand_if_ready(self, req: _Request) -> list[Outbound]:
        """Expand now, unless a draft head still lacks the features of committed tokens."""
        head = isinstance(req.drafter, HeadContextDrafter) and req.mode != "ar"
        if head and not req.drafter.has_features(req.context_length):
            return []
        req.expand_waiting = False
        return self._expand(req)

    def _expand(self, req: _Request) -> list[Outbound]:
        started = time.perf_counter()
        with span("draft"):
            out, first = self._draft_segments(req)
        tree = req.tree
        draft_s = time.perf_counter() - started
        req.busy_s += draft_s
        req.expansions += 1
        req.nodes += len(tree) - first
        report = DraftReport(
            request_id=req.request_id, epoch=req.log.epoch, first=first,
            tokens=tree.tokens[first:], parents=tree.parents[first:], segments_sent=len(out),
            draft_ms=draft_s * 1e3,
        )
        return [*out, ("scheduler", report)]

    def _draft_segments(self, req: _Request) -> tuple[list[Outbound], int]:
        """Grow (or start) the tree and cut the new nodes into segments; returns them and the first new node."""
        if req.mode == "ar":
            req.tree, first, sizes = single_root(req.root), 0, [1]  # no speculation: the root alone
        else:
            if req.tree is None:
                self._extend_context(req)
                req.tree, sizes = self._fill(req)
                first = 0
            else:
                first = len(req.tree)
                req.tree = self._grow(req)
                sizes = [len(req.tree) - first]
        tree = req.tree
        depths = tree.depths()
        root_pos = req.context_length - 1
        out: list[Outbound] = []
        start = first
        for i, size in enumerate(sizes):
            nodes = range(start, start + size)
            segment = self._segment(
                req, "tree", start, [tree.tokens[j] for j in nodes], [tree.parents[j] for j in nodes],
                [root_pos + depths[j] for j in nodes], closes_tree=first == 0 and i == len(sizes) - 1,
            )
            out.append(("next", segment))
            start += size
        return out, first

    def _fill(self, req: _Request) -> tuple[DraftTree, list[int]]:
        """A new round's tree and its segment sizes: one segment per pipeline hop."""
        settings = req.draft
        count = settings.fill_segments or self._hops
        if req.mode == "pipedec":  # one tree level per segment, the root riding with the first
            tree, sizes = single_root(req.root), []
            for _ in range(count):
                before = len(tree)
                tree = req.drafter.grow_level(tree, settings.pipedec_width, settings.top_k)
                sizes.append(len(tree) - before + (1 if before == 1 else 0))
            return tree, sizes
        tree = req.drafter.draft(req.root, TreeShape(settings.fill_nodes, settings.fill_depth, settings.top_k))
        return tree, segment_sizes(len(tree), count, settings.segment_cap)

    def _grow(self, req: _Request) -> DraftTree:
        """The running round's tree after one expansion (nodes appended at the end)."""
        settings = req.draft
        if req.mode == "pipedec":
            pending, req.pending = req.pending, []  # they ride in the growth's one draft forward
            return req.drafter.grow_level(req.tree, settings.pipedec_width, settings.top_k, pending)
        scale = 1 + min(req.idle_expands, MAX_GROWTH)  # idle expansions draft more to find new nodes
        req.idle_expands += 1
        if settings.expansion == "grow":
            pending, req.pending = req.pending, []
            tree = req.tree
            for level in range(settings.grow_levels):
                tree = req.drafter.grow_best(tree, settings.expand_leaves * scale, settings.expand_nodes * scale,
                                               settings.top_k, pending if level == 0 else ())
            return tree
        self._extend_context(req)
        shape = TreeShape(settings.expand_nodes * scale, settings.expand_depth + scale - 1, settings.top_k)
        merged, _ = merge_trees(req.tree, req.drafter.draft(req.root, shape))
        return merged

    def _segment(self, req, phase, first, tokens, parents, positions, last=False, closes_tree=False) -> Segment:
        seg = Segment(
            request_id=req.request_id, round=req.log.round, epoch=req.log.epoch, seq=req.seq, phase=phase,
            first=first, tokens=tuple(tokens), parents=tuple(parents), positions=tuple(positions),
            last_prefill=last, closes_tree=closes_tree,
        )
        req.seq += 1
        return seg
