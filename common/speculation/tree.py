"""The draft tree and its pure operations: segmenting, pruning, remapping, renumbering and merging.

Nodes are numbered so that every parent precedes its children (score order does that: a child's
cumulative log-probability never exceeds its parent's). Node 0 is the root: the last token the base
model emitted, known correct but not yet in any KV cache. ``parents[0] == -1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ROOT = 0


@dataclass(frozen=True)
class DraftTree:
    """Tokens, parent indices and cumulative draft log-probabilities (root = 0.0) of every node."""

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    scores: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.tokens)
        assert len(self.parents) == n and len(self.scores) == n, "tree fields disagree in length"
        assert n == 0 or self.parents[0] == -1, "node 0 must be the root"
        assert all(0 <= p < i for i, p in enumerate(self.parents) if i > 0), "a parent must precede its child"

    def __len__(self) -> int:
        return len(self.tokens)

    def depths(self) -> list[int]:
        out = [0] * len(self)
        for i in range(1, len(self)):
            out[i] = out[self.parents[i]] + 1
        return out

    def children(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(1, len(self)):
            out.setdefault(self.parents[i], []).append(i)
        return out

    def child_with_token(self, node: int, token: int) -> int | None:
        for i in range(node + 1, len(self)):
            if self.parents[i] == node and self.tokens[i] == token:
                return i
        return None

    def appended(self, tokens: Sequence[int], parents: Sequence[int], scores: Sequence[float]) -> DraftTree:
        return DraftTree(self.tokens + tuple(tokens), self.parents + tuple(parents), self.scores + tuple(scores))


def single_root(token: int) -> DraftTree:
    return DraftTree((token,), (-1,), (0.0,))


def ancestor_sets(parents: Sequence[int]) -> list[frozenset[int]]:
    """Ancestor-or-self closure of every node: the tree attention mask as sets."""
    out: list[frozenset[int]] = []
    for i, p in enumerate(parents):
        out.append((out[p] if p >= 0 else frozenset()) | {i})
    return out


def segment_sizes(nodes: int, segments: int, cap: int) -> list[int]:
    """Cut ``nodes`` score-ordered nodes into near-equal contiguous segments, smaller ones first.

    At most ``cap`` nodes a segment; when ``segments`` of ``cap`` are not enough, more segments follow
    (they queue at stage 1). Every node lands in exactly one segment.
    """
    assert nodes >= 0 and segments >= 1 and cap >= 1
    count = max(min(segments, nodes), -(-nodes // cap)) if nodes else 0
    if count == 0:
        return []
    base, extra = divmod(nodes, count)
    return [base + (1 if i >= count - extra else 0) for i in range(count)]


# ----------------------------------------------------------------------------------------------- pruning
def plan_prune(tree: DraftTree, accepted: Sequence[int], next_token: int) -> tuple[int, ...]:
    """Nodes to keep after a verification: the node of ``next_token`` under the last accepted node and
    all its descendants, ascending. Empty when the token is not in the tree (the round ends)."""
    assert accepted and accepted[0] == ROOT, "an accepted path starts at the root"
    new_root = tree.child_with_token(accepted[-1], next_token)
    if new_root is None:
        return ()
    keep = [new_root]
    inside = {new_root}
    for i in range(new_root + 1, len(tree)):
        if tree.parents[i] in inside:
            inside.add(i)
            keep.append(i)
    return tuple(keep)


def index_map(size: int, keep: Sequence[int]) -> list[int]:
    """Old index -> new index (``keep[i]`` -> ``i``), -1 for every node that leaves the tree."""
    out = [-1] * size
    for new, old in enumerate(keep):
        if old < size:
            out[old] = new
    return out


def prune_tree(tree: DraftTree, keep: Sequence[int]) -> DraftTree:
    """The kept subtree renumbered from 0, its scores re-based at the new root."""
    if not keep:
        return DraftTree((), (), ())
    mapping = index_map(len(tree), keep)
    base = tree.scores[keep[0]]
    parents = tuple(-1 if i == 0 else mapping[tree.parents[old]] for i, old in enumerate(keep))
    assert all(p >= 0 for p in parents[1:]), "kept nodes must be ancestor-closed"
    return DraftTree(
        tuple(tree.tokens[k] for k in keep), parents, tuple(tree.scores[k] - base for k in keep)
    )


@dataclass(frozen=True)
class RemappedRows:
    """Rows of a segment brought forward through prune events."""

    rows: tuple[int, ...]  # which of the segment's original rows survive, ascending
    first: int  # new tree index of the first surviving row (meaningless when none survive)
    parents: tuple[int, ...]  # new parent indices of the surviving rows (-1: root)


def remap_rows(first: int, parents: Sequence[int], keep: Sequence[int]) -> RemappedRows:
    """Apply one prune event to a segment holding nodes ``first .. first+len(parents)-1``.

    A row survives iff its node is kept. The kept nodes form an ancestor-closed subtree whose root's
    parent was accepted, so every surviving parent is kept too, or the row is the new root (-1).
    """
    if not keep:
        return RemappedRows((), 0, ())
    last = first + len(parents)
    mapping = index_map(last, keep)
    rows, new_parents = [], []
    for r, p in enumerate(parents):
        new = mapping[first + r]
        if new < 0:
            continue
        rows.append(r)
        new_parents.append(-1 if new == 0 else mapping[p])
    new_first = mapping[first + rows[0]] if rows else 0
    assert all(p >= 0 or i + new_first == 0 for i, p in enumerate(new_parents)), "kept set not closed"
    return RemappedRows(tuple(rows), new_first, tuple(new_parents))


# ------------------------------------------------------------------------------------------------ merge
def merge_trees(tree: DraftTree, fresh: DraftTree) -> tuple[DraftTree, int]:
    """Append the nodes of ``fresh`` (a new draft from the same root) whose token paths ``tree`` lacks.

    Returns the merged tree and the index of its first new node. Appended nodes keep ``fresh``'s
    score order, so parents still precede children; every token path appears once.
    """
    assert len(tree) and len(fresh) and tree.tokens[0] == fresh.tokens[0], "trees must share the root"
    by_edge = {(p, t): i for i, (p, t) in enumerate(zip(tree.parents, tree.tokens, strict=True)) if i}
    where = [0] * len(fresh)  # fresh index -> merged index
    tokens: list[int] = []
    parents: list[int] = []
    scores: list[float] = []
    n = len(tree)
    for j in range(1, len(fresh)):
        parent = where[fresh.parents[j]]
        key = (parent, fresh.tokens[j])
        found = by_edge.get(key)
        if found is None:
            found = n + len(tokens)
            by_edge[key] = found
            tokens.append(fresh.tokens[j])
            parents.append(parent)
            scores.append(fresh.scores[j])
        where[j] = found
    return tree.appended(tokens, parents, scores), n


# ------------------------------------------------------------------------------------------ renumbering
class Renumbering:
    """One prune event's old -> new node numbering, for nodes the event's decider knew and for later ones.

    A node below ``known`` (the tree the scheduler decided over) survives iff it is in ``keep`` and
    becomes ``keep.index(node)``. A node at or past ``known`` was drafted before the event but not yet
    reported to the scheduler: it survives iff its parent survives, numbered after every kept node in
    index order. Such late nodes must be brought in index order; a node brought again gets its first
    answer. ``known < 0``: every node is known (a node not in ``keep`` is dropped).
    """

    def __init__(self, keep: Sequence[int], known: int = -1) -> None:
        self.known = known if known >= 0 else (keep[-1] + 1 if keep else 0)
        assert not keep or keep[-1] < self.known, "kept nodes must be known"
        self._keep = index_map(self.known, keep)
        self._late: list[int] = []  # new index of node known + i, -1: dropped
        self._next = len(keep)
        self._ends_round = not keep
        self._late_allowed = known >= 0

    def new_index(self, node: int, parent: int) -> int:
        """New index of ``node`` (old numbering, parent ``parent``), -1 when it leaves the tree."""
        late = node - self.known
        if self._ends_round or late < len(self._late) or not self._late_allowed:
            return self._lookup(node)
        if late > len(self._late):
            raise ValueError(f"node {node} brought before node {self.known + len(self._late)}")
        alive = parent >= 0 and self._lookup(parent) >= 0
        self._late.append(self._next if alive else -1)
        self._next += alive
        return self._late[-1]

    def _lookup(self, node: int) -> int:
        """New index of a known node or of a late node already brought."""
        if self._ends_round:
            return -1
        if node < self.known:
            return self._keep[node]
        late = node - self.known
        if not self._late_allowed:
            return -1
        if late >= len(self._late):
            raise ValueError(f"node {node} is referred to before it was brought")
        return self._late[late]

    def remap(self, first: int, parents: Sequence[int]) -> RemappedRows:
        """Rows ``first .. first+len(parents)-1`` as they stand after the event (see :func:`remap_rows`)."""
        rows: list[int] = []
        new_parents: list[int] = []
        new_first = 0
        for r, p in enumerate(parents):
            new = self.new_index(first + r, p)
            if new < 0:
                continue
            if not rows:
                new_first = new
            rows.append(r)
            new_parents.append(-1 if new == 0 else self._lookup(p))
        assert all(p >= 0 or i + new_first == 0 for i, p in enumerate(new_parents)), "kept set not closed"
        return RemappedRows(tuple(rows), new_first, tuple(new_parents))


def renumbered(tree: DraftTree, now: RemappedRows) -> DraftTree:
    """``tree``'s surviving nodes (``now``: its whole tree brought through an event), scores re-based at the root."""
    if not now.rows:
        return DraftTree((), (), ())
    assert now.first == 0, "a whole tree brought forward starts at the root"
    base = tree.scores[now.rows[0]]
    return DraftTree(tuple(tree.tokens[r] for r in now.rows), now.parents,
                     tuple(tree.scores[r] - base for r in now.rows))
