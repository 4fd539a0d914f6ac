"""The drafter: head of the ring. Streams the prompt, then draft-tree segments, into stage 1.

It mirrors the scheduler's tree by applying the same prune events (nodes the scheduler had not yet
heard of survive iff their parent does). Sending is paced by credits: each Expand says one segment
left the ring. A new round's first credit gets a fill tree cut into one segment per pipeline hop, and
one more segment may follow at once (``EXTRA_IN_FLIGHT``). In flowspec "grow" mode drafting is not
paced: between messages (:meth:`DrafterCore.run_batch`, which the service loop runs once every arrived
message is handled) the drafter grows every request's tree a level at a time from its best leaves, ahead
of the verdicts, all requests' levels in one shared draft forward (:func:`common.speculation.growth.grow_many`:
rows concatenated, attention per request over its own cache and tree mask); a credit sends every
pre-drafted node that survived the prunes since, and the next growth starts. Its shape follows the
measured acceptance (:mod:`common.speculation.tree_policy`). Other modes draft when a credit arrives.
With a draft head the base's features of committed tokens arrive from the verifier (``Features``);
drafting that needs features not yet arrived waits for them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

from common.observability import trace
from common.speculation import tree_policy
from common.speculation.budget import SpeculationBudget
from common.speculation.drafting import TreeShape
from common.speculation.fill import ContextStep, Fill
from common.speculation.growth import Drafter, LevelStep
from common.speculation.tree import DraftTree, renumbered, segment_sizes, single_root
from common.wire.codec import Message
from common.wire.commands import EndRequest, Expand, Prune, StartRequest
from common.wire.ordering import OrderError
from common.wire.reports import DraftReport, StageStats
from common.wire.request_table import RequestTable
from common.wire.ring import Features, Phase, Segment
from services.batch import Batched
from services.drafter import on_credit, shared
from services.drafter.request import DraftingRequest

Outbound = tuple[str, Message]
EXTRA_IN_FLIGHT = 1  # segments beyond a fill's one per hop: the pipeline has room, the drafter does not flood it


class Drafters(Protocol):
    """Where each request's drafter comes from: a draft model's or a draft head's, over a cache of its own."""

    def take(self) -> Drafter: ...

    def give(self, drafter: Drafter) -> None: ...


class DrafterCore:
    def __init__(self, name: str, drafters: Drafters, hops: int, budget: SpeculationBudget | None = None) -> None:
        self.name = name
        self._drafters = drafters
        self._hops = hops  # stages + verifier: segments a fill keeps in flight
        self._budget = budget or SpeculationBudget()  # draft nodes of all the requests in flight together
        self._requests: RequestTable[DraftingRequest] = RequestTable()
        self._turn = 0  # round-robin over requests with work

    @property
    def requests(self) -> dict[str, DraftingRequest]:
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
            self._on_prune(req, msg)
            return []
        if isinstance(msg, Features):
            if not req.drafter.takes_features:
                raise OrderError(f"{self.name} drafts with a model, not a head: it takes no features")
            req.drafter.add_features(msg.position, msg.hidden)
            return self._spend_credit(req)
        if isinstance(msg, Expand):
            if msg.epoch != req.log.epoch:
                raise OrderError(f"expand for epoch {msg.epoch} while at epoch {req.log.epoch}")
            req.credits += 1
            return self._spend_credit(req)
        raise OrderError(f"{self.name} does not handle {msg.KIND} messages")

    def batch_ready(self) -> bool:
        """Whether a request has drafting to do between messages (a context pass or a growth level)."""
        return any(req.prefill or self._has_work(req) for req in self._requests.active.values())

    def run_batch(self) -> Batched:
        """A step for every request with work: its next prompt chunk into the ring, and one context pass or growth
        level each, the levels in shared forwards."""
        return self._draft_step([req for req in self._requests.active.values() if req.prefill or self._has_work(req)])

    def next_work(self) -> str | None:
        """A request with drafting to do between messages (round-robin), or None: wait for a message."""
        ids = [rid for rid, req in self._requests.active.items() if req.prefill or self._has_work(req)]
        if not ids:
            return None
        self._turn += 1
        return ids[self._turn % len(ids)]

    def work(self, request_id: str) -> list[Outbound]:
        """One step for ``request_id`` alone: its next prompt chunk into the ring, and a context pass or one growth
        level (and what it lets out)."""
        req = self._requests.active.get(request_id)
        if req is None or not (req.prefill or self._has_work(req)):
            return []
        out = self._draft_step([req])
        if out.failed:
            raise out.failed[0][1]
        return out.sends

    def _draft_step(self, reqs: list[DraftingRequest]) -> Batched:
        """Each request's next prompt chunk into the ring, then the drafting of every request with work in shared
        forwards (:mod:`services.drafter.shared`): context passes, new rounds' fills, growth levels. A long prompt
        goes a chunk per step, into the ring and into the draft cache, so other requests' segments go between its
        chunks at every hop."""
        out = Batched()
        contexts: list[tuple[DraftingRequest, ContextStep]] = []
        fills: list[tuple[DraftingRequest, Fill]] = []
        levels: list[tuple[DraftingRequest, LevelStep]] = []
        for req in reqs:
            if req.prefill:
                out.sends.append(("next", req.prefill.popleft()))
            if not self._has_work(req):
                continue
            try:
                if req.fill_due:
                    fills.append((req, self._begin_fill(req)))
                elif req.tree is None:
                    contexts.append((req, self._begin_context(req)))
                else:
                    levels.append((req, self._begin_level(req)))
            except Exception as exc:  # this request's state is at fault: it fails alone
                out.fail([req.request_id], exc)
        for context_group in shared.by_model(contexts, lambda step: step.shared):
            shared.extend_contexts(context_group, out)
        drafted = shared.draft_fills(fills, out) if fills else []
        for req, tree in drafted:
            self._guarded(req, out, functools.partial(self._send_fill, req, tree))
        for level_group in shared.by_model(levels, lambda step: step.shared):
            for req, tree in shared.grow_levels(level_group, out):
                self._guarded(req, out, functools.partial(self._after_level, req, tree))
        return out

    @staticmethod
    def _guarded(req: DraftingRequest, out: Batched, then: Callable[[], list[Outbound] | None]) -> None:
        """What ``req`` does with its drafted tree; a failure fails it alone."""
        try:
            out.sends += then() or []
        except Exception as exc:
            out.fail([req.request_id], exc)

    def _send_fill(self, req: DraftingRequest, tree: DraftTree) -> list[Outbound]:
        """A new round's fill out, one segment per hop; one more segment may follow at once, then one per credit."""
        req.tree, req.fill_due = tree, False
        req.expansions += 1
        out = self._send(req, segment_sizes(len(tree), self._fill_segments(req), req.draft.segment_cap))
        req.credits = EXTRA_IN_FLIGHT
        self._start_growth(req)
        return out

    # ------------------------------------------------------------------------------------------ messages
    def _release(self, request_id: str) -> None:
        req = self._requests.end(request_id)
        if req is not None:
            self._drafters.give(req.drafter)

    def _start(self, msg: StartRequest) -> tuple[list[Outbound], list[Message]]:
        req = DraftingRequest(msg.request_id, msg.draft, self._drafters.take(), mode=msg.mode, context_length=len(msg.prompt))
        early = self._requests.start(msg.request_id, req)
        prompt = list(msg.prompt)
        for start in range(0, len(prompt), msg.prefill_chunk):
            chunk = prompt[start : start + msg.prefill_chunk]
            last = start + msg.prefill_chunk >= len(prompt)
            req.prefill.append(self._segment(req, Phase.PREFILL, start, chunk, (), range(start, start + len(chunk)), last))
        out: list[Outbound] = [("next", req.prefill.popleft())] if req.prefill else []  # the rest a chunk per step
        req.pending = prompt  # drafted into the cache while the base model prefills
        req.prompt_left, req.prefill_chunk = len(prompt), max(msg.prefill_chunk, 1)
        return out, early

    def _on_prune(self, req: DraftingRequest, event: Prune) -> None:
        """Apply a prune event: commit its tokens, keep the next token's subtree (pre-drafted nodes too)."""
        req.log.record(event)
        if event.accepted and req.tree is not None:
            self._observe(req, event)
        if req.mode.drafts:  # ar never drafts, so the draft model needs no context
            req.pending.extend(event.new_tokens)
        req.context_length += len(event.new_tokens)
        req.root = event.next_token
        self._renumber(req, event)
        req.idle_expands = 0

    def _observe(self, req: DraftingRequest, event: Prune) -> None:
        """Fold one verification into the acceptance averages (before the tree is renumbered)."""
        assert req.tree is not None, "observed only while a round's tree stands"
        last = event.accepted[-1]
        full = last not in req.tree.parents  # the accepted path ran to a leaf
        req.acceptance = tree_policy.observe(req.acceptance, len(event.accepted) - 1, full, bool(event.keep))

    def _renumber(self, req: DraftingRequest, event: Prune) -> None:
        if event.ends_round or req.tree is None:
            req.tree, req.sent, req.shape, req.levels_grown = None, 0, None, 0
            return
        now = req.log.bring_forward(event.epoch - 1, 0, req.tree.parents)
        req.sent = sum(1 for r in now.rows if r < req.sent)
        req.tree = renumbered(req.tree, now)
        if not len(req.tree):
            raise OrderError(f"prune epoch {event.epoch} keeps nodes but none of this drafter's tree")

    def _spend_credit(self, req: DraftingRequest) -> list[Outbound]:
        """Send what a credit allows now: a fill, the pre-drafted nodes, or (other modes) a fresh growth."""
        if req.credits < 1 or not self._features_ready(req):
            return []
        if req.tree is not None and req.continuous:
            if req.sent == len(req.tree):  # nothing pre-drafted survived: send the next level as soon as it is drafted
                if not self._growing(req):
                    self._start_growth(req)
                return []
            req.credits -= 1
            out = self._send(req, [len(req.tree) - req.sent])
            self._start_growth(req)
            return out
        if req.fill_due:
            return []  # the fill is drafted at the next batch, beside other requests' (``run_batch``)
        req.credits -= 1
        if req.continuous and self._speculates(req):
            req.fill_due = True
            return []
        out = self._expand(req)
        if req.continuous:  # a round without speculation now (the root alone): growth waits for a share
            req.credits = EXTRA_IN_FLIGHT
            self._start_growth(req)
        return out

    def _features_ready(self, req: DraftingRequest) -> bool:
        """Whether a draft head has the features of every committed token but the root (a model always has)."""
        head = req.drafter.takes_features and req.mode.drafts
        return not head or req.drafter.has_features(req.context_length)

    # ------------------------------------------------------------------------- drafting ahead (flowspec)
    def _has_work(self, req: DraftingRequest) -> bool:
        if not req.mode.drafts or not self._features_ready(req):
            return False
        if req.fill_due:
            return True
        if req.tree is None:  # a context pass, unless it speculates on no round now (no draft at all: ar's work)
            return bool(req.pending) and self._speculates(req)
        return req.continuous and self._growing(req)

    def _speculates(self, req: DraftingRequest) -> bool:
        """Whether ``req``'s share of the budget holds a node below the root (else it drafts nothing at all)."""
        return self._budget.fill_nodes(len(self._requests.active), req.draft.node_cap, req.draft.fill_nodes) > 0

    def _begin_fill(self, req: DraftingRequest) -> Fill:
        """A new round's fill, the pending context riding in its first level (``_fill`` for modes on a credit)."""
        nodes = max(1, self._budget.fill_nodes(len(self._requests.active), req.draft.node_cap, req.draft.fill_nodes))
        pending, req.pending = req.pending, []
        req.prompt_left = 0
        return req.drafter.fill(req.root, TreeShape(nodes, req.draft.fill_depth, req.draft.top_k), pending)

    def _begin_context(self, req: DraftingRequest) -> ContextStep:
        """The pending tokens into the draft cache: all of them, or a prompt's chunk while the prompt goes in."""
        take = min(req.prefill_chunk, len(req.pending)) if req.prompt_left else len(req.pending)
        tokens, req.pending = req.pending[:take], req.pending[take:]
        req.prompt_left = max(req.prompt_left - take, 0)
        return req.drafter.context_step(tokens)

    def _fill_segments(self, req: DraftingRequest) -> int:
        return req.draft.fill_segments or self._hops

    @staticmethod
    def _growing(req: DraftingRequest) -> bool:
        return req.shape is not None and req.levels_grown < req.shape.levels

    def _start_growth(self, req: DraftingRequest) -> None:
        """Choose the next growth's shape (None at the node cap: the next prune makes room)."""
        assert req.tree is not None, "a growth starts on a round's tree"
        settings = req.draft
        base = tree_policy.GrowthShape(settings.grow_levels, settings.expand_leaves, settings.expand_nodes)
        if settings.adaptive:
            depth = max(req.tree.depths())
            req.shape = tree_policy.growth_shape(req.acceptance, base, self._hops, depth, len(req.tree),
                                                 self._node_share(req))
        else:
            fits = len(req.tree) + base.levels * base.width <= self._node_share(req)
            req.shape = base if fits else None
        req.levels_grown = 0

    def _begin_level(self, req: DraftingRequest) -> LevelStep:
        """The next level of ``req``'s growth: children of the best leaves (the pending context rides along)."""
        shape = req.shape
        assert req.tree is not None and shape is not None, "a level grows only while a growth runs"
        pending, req.pending = req.pending, []
        return req.drafter.level_best(req.tree, shape.leaves, shape.width, req.draft.top_k, pending)

    def _after_level(self, req: DraftingRequest, tree: DraftTree) -> list[Outbound]:
        """A growth level's tree in, and what a credit lets out now."""
        self._end_level(req, tree)
        return self._spend_credit(req)

    def _end_level(self, req: DraftingRequest, tree: DraftTree) -> None:
        shape = req.shape
        assert req.tree is not None and shape is not None, "a level grows only while a growth runs"
        before, req.tree = len(req.tree), tree
        trace.counter("tree_levels", shape.levels, req.request_id)
        trace.counter("tree_width", shape.width, req.request_id)
        req.expansions += 1
        req.levels_grown = req.levels_grown + 1 if len(req.tree) > before else shape.levels  # none new: done

    # ---------------------------------------------------------------------- drafting on a credit (others)
    def _expand(self, req: DraftingRequest) -> list[Outbound]:
        """Draft now (a new round's fill, or a growth in the modes that do not draft ahead) and send it."""
        with shared.charged([req]):
            sizes = self._draft(req)
        req.expansions += 1
        return self._send(req, sizes)

    def _draft(self, req: DraftingRequest) -> list[int]:
        """Grow (or start) the tree (:mod:`services.drafter.on_credit`); returns the segment sizes of its unsent
        nodes. Without speculation (ar, or no share of the budget now) the root goes alone and nothing is drafted."""
        if req.tree is None:
            if not req.mode.drafts or not (req.mode.grows_by_level or self._speculates(req)):
                req.tree = single_root(req.root)
                return [1]
            nodes = self._budget.fill_nodes(len(self._requests.active), req.draft.node_cap, req.draft.fill_nodes)
            req.tree, sizes = on_credit.fill(req, nodes, self._fill_segments(req))
            return sizes
        first = len(req.tree)
        req.tree = on_credit.grow(req)
        return [len(req.tree) - first]

    def _node_share(self, req: DraftingRequest) -> int:
        """The most nodes ``req``'s tree may hold now: its share of the budget, within its own node cap."""
        return self._budget.share(len(self._requests.active), req.draft.node_cap)

    # --------------------------------------------------------------------------------------------- output
    def _send(self, req: DraftingRequest, sizes: list[int]) -> list[Outbound]:
        """The report of the tree's unsent nodes, then those nodes cut into segments of ``sizes``."""
        tree, first = req.tree, req.sent
        assert tree is not None, "only a round's tree is sent"
        assert sum(sizes) == len(tree) - first, "segments must cover exactly the unsent nodes"
        depths = tree.depths()
        root_pos = req.context_length - 1
        report = DraftReport(
            request_id=req.request_id, epoch=req.log.epoch, first=first, tokens=tree.tokens[first:],
            parents=tree.parents[first:], segments_sent=len(sizes), draft_ms=req.unreported_s * 1e3,
        )
        out: list[Outbound] = [("scheduler", report)]  # ahead of its segments, which need N hops to be verified
        start = first
        for i, size in enumerate(sizes):
            nodes = range(start, start + size)
            segment = self._segment(
                req, Phase.TREE, start, [tree.tokens[j] for j in nodes], [tree.parents[j] for j in nodes],
                [root_pos + depths[j] for j in nodes], closes_tree=first == 0 and i == len(sizes) - 1,
            )
            out.append(("next", segment))
            start += size
        req.sent = len(tree)
        req.nodes += len(tree) - first
        req.unreported_s = 0.0
        return out

    def _segment(self, req, phase, first, tokens, parents, positions, last=False, closes_tree=False) -> Segment:
        seg = Segment(
            request_id=req.request_id, round=req.log.round, epoch=req.log.epoch, seq=req.seq, phase=phase,
            first=first, tokens=tuple(tokens), parents=tuple(parents), positions=tuple(positions),
            last_prefill=last, closes_tree=closes_tree,
        )
        req.seq += 1
        return seg
