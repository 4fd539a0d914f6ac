"""The drafter's shared forwards: the drafting of several requests at once, each charged its share of the time.

Between messages the drafter drafts for every request with work (:meth:`services.drafter.core.DrafterCore.run_batch`):
context passes (committed tokens into the draft cache), new rounds' fills (a level at a time) and growth levels.
Requests whose drafters share a model share its forwards (:mod:`common.speculation.fill`,
:func:`common.speculation.growth.grow_many`): one forward per round of rows for all of them, one logits call per
level. A failed shared forward fails every request in it; the others' state is as before it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from common.observability import trace
from common.speculation.fill import ContextStep, Fill, extend_many
from common.speculation.growth import LevelStep, grow_many
from common.speculation.tree import DraftTree
from services.batch import Batched, Forward
from services.drafter.request import DraftingRequest

T = TypeVar("T")


def by_model(items: Sequence[tuple[DraftingRequest, T]],
             shared_of: Callable[[T], object]) -> list[list[tuple[DraftingRequest, T]]]:
    """``items`` grouped by the model (or head) their forwards share, in order of first appearance."""
    groups: dict[int, list[tuple[DraftingRequest, T]]] = {}
    for req, item in items:
        groups.setdefault(id(shared_of(item)), []).append((req, item))
    return list(groups.values())


@contextlib.contextmanager
def charged(reqs: Sequence[DraftingRequest]) -> Iterator[None]:
    """Time drafting done for ``reqs`` together: a ``draft`` span each, each charged an even share of the time."""
    started, started_ns = time.perf_counter(), trace.now_ns()
    yield
    share = (time.perf_counter() - started) / len(reqs)
    for req in reqs:
        trace.record("draft", req.request_id, started_ns, trace.now_ns())
        req.busy_s += share
        req.unreported_s += share


def extend_contexts(group: Sequence[tuple[DraftingRequest, ContextStep]], out: Batched) -> None:
    """Committed tokens into several requests' draft caches, a round of rows per shared forward."""
    with charged([req for req, _ in group]):
        try:
            forwards = extend_many(group[0][1].shared, [step for _, step in group])
        except Exception as exc:  # the shared forward failed: every request in it fails
            out.fail([req.request_id for req, _ in group], exc)
            return
    out.forwards += [Forward(requests, rows) for requests, rows in forwards]


def draft_fills(group: Sequence[tuple[DraftingRequest, Fill]], out: Batched) -> list[tuple[DraftingRequest, DraftTree]]:
    """New rounds' fill trees of several requests, a level at a time, each level of the requests that share a
    model in shared forwards; [] if one failed (every request of the group is failed in ``out``)."""
    with charged([req for req, _ in group]):
        try:
            while steps := [(req, step) for req, fill in group if (step := fill.level()) is not None]:
                for same in by_model(steps, lambda step: step.shared):
                    _, forwards = grow_many(same[0][1].shared, [step for _, step in same])
                    out.forwards += [Forward(requests, rows) for requests, rows in forwards]
        except Exception as exc:  # a shared forward failed: every request in it fails
            out.fail([req.request_id for req, _ in group], exc)
            return []
    return [(req, fill.tree) for req, fill in group]


def grow_levels(group: Sequence[tuple[DraftingRequest, LevelStep]],
                out: Batched) -> list[tuple[DraftingRequest, DraftTree]]:
    """One growth level of several requests that share a model, in shared forwards; [] if it failed."""
    with charged([req for req, _ in group]):
        try:
            trees, forwards = grow_many(group[0][1].shared, [step for _, step in group])
        except Exception as exc:  # the shared forward failed: every request in it fails
            out.fail([req.request_id for req, _ in group], exc)
            return []
    out.forwards += [Forward(requests, rows) for requests, rows in forwards]
    return [(req, tree) for (req, _), tree in zip(group, trees, strict=True)]
