"""Pure draft-tree operations: segmenting, masks, depths, pruning, row remapping and merging."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.speculation.tree import (
    DraftTree,
    RemappedRows,
    Renumbering,
    ancestor_sets,
    index_map,
    merge_trees,
    plan_prune,
    prune_tree,
    remap_rows,
    renumbered,
    segment_sizes,
    single_root,
)
from common.wire.commands import Prune
from common.wire.ordering import PruneLog
from tests.common.speculation.strategies import (
    next_tokens,
    path_to,
    renumber,
    root_paths,
    subtree,
    token_path,
    topological_orders,
    trees,
)

FAST = settings(max_examples=150, deadline=None)
SLOW = settings(max_examples=60, deadline=None)


def assert_valid(tree: DraftTree) -> None:
    assert len(tree.parents) == len(tree.tokens) == len(tree.scores)
    if len(tree):
        assert tree.parents[0] == -1
    assert all(0 <= p < i for i, p in enumerate(tree.parents) if i)


def all_token_paths(tree: DraftTree) -> list[tuple[int, ...]]:
    return [token_path(tree, i) for i in range(len(tree))]


# ---------------------------------------------------------------------------------------- segment_sizes
@FAST
@given(st.integers(0, 300), st.integers(1, 12), st.integers(1, 40))
def test_segment_sizes_properties(n: int, s: int, cap: int) -> None:
    sizes = segment_sizes(n, s, cap)
    assert sum(sizes) == n
    assert all(1 <= size <= cap for size in sizes)
    assert sizes == sorted(sizes), "smaller segments first"
    if n == 0:
        assert sizes == []
    else:
        assert len(sizes) == max(min(s, n), math.ceil(n / cap))
        assert max(sizes) - min(sizes) <= 1, "near-equal"


@pytest.mark.parametrize(
    ("n", "s", "cap", "expected"),
    [
        (0, 5, 16, []),
        (1, 5, 16, [1]),
        (3, 5, 16, [1, 1, 1]),
        (5, 5, 16, [1, 1, 1, 1, 1]),
        (10, 3, 16, [3, 3, 4]),
        (11, 3, 16, [3, 4, 4]),
        (80, 5, 16, [16, 16, 16, 16, 16]),
        (33, 2, 16, [11, 11, 11]),
        (32, 1, 16, [16, 16]),
        (7, 1, 100, [7]),
        (4, 2, 1, [1, 1, 1, 1]),
    ],
)
def test_segment_sizes_table(n: int, s: int, cap: int, expected: list[int]) -> None:
    assert segment_sizes(n, s, cap) == expected


def test_segment_sizes_cap_is_a_hard_limit() -> None:
    """Unlike FlowSpec's partition ([16,16,16,16,17] here), no segment exceeds the cap: a segment is a
    unit of pipeline work, and the cap bounds one stage's step time."""
    assert segment_sizes(81, 5, 16) == [13, 13, 13, 14, 14, 14]


# ------------------------------------------------------------------------------- masks, depths, positions
@FAST
@given(trees())
def test_ancestor_sets_are_the_ancestor_or_self_closure(tree: DraftTree) -> None:
    sets = ancestor_sets(tree.parents)
    assert len(sets) == len(tree)
    for i in range(len(tree)):
        assert sets[i] == frozenset(path_to(tree, i))
        parent_set = sets[tree.parents[i]] if i else frozenset()
        assert sets[i] == parent_set | {i}
    # as a mask: row i attends column j iff j is i or one of its ancestors (so j <= i)
    for i in range(len(tree)):
        for j in range(len(tree)):
            assert (j in sets[i]) == (j == i or j in path_to(tree, i)[:-1])
            if j in sets[i]:
                assert j <= i


def test_ancestor_sets_table() -> None:
    #      0
    #     / \
    #    1   2
    #    |   |
    #    3   4 - 5 is a child of 4
    parents = (-1, 0, 0, 1, 2, 4)
    assert ancestor_sets(parents) == [
        {0}, {0, 1}, {0, 2}, {0, 1, 3}, {0, 2, 4}, {0, 2, 4, 5},
    ]
    assert ancestor_sets(()) == []


@FAST
@given(trees(), st.integers(0, 1000))
def test_depths_and_positions(tree: DraftTree, root_pos: int) -> None:
    depths = tree.depths()
    assert depths[0] == 0
    for i in range(1, len(tree)):
        assert depths[i] == depths[tree.parents[i]] + 1
        assert depths[i] == len(path_to(tree, i)) - 1
    positions = [root_pos + d for d in depths]
    assert all(positions[i] == positions[tree.parents[i]] + 1 for i in range(1, len(tree)))


# ------------------------------------------------------------------------------------------- plan_prune
@st.composite
def tree_path_token(draw: st.DrawFn, score_ordered: bool | None = None):
    ordered = draw(st.booleans()) if score_ordered is None else score_ordered
    tree = draw(trees(score_ordered=ordered))
    path = draw(root_paths(tree))
    token = draw(next_tokens(tree, path[-1]))
    return tree, path, token


@FAST
@given(tree_path_token())
def test_plan_prune(case) -> None:
    tree, path, token = case
    keep = plan_prune(tree, path, token)
    kids = [c for c in tree.children().get(path[-1], []) if tree.tokens[c] == token]
    if not kids:
        assert keep == ()
        return
    (new_root,) = kids
    assert keep[0] == new_root
    assert list(keep) == sorted(set(keep)), "ascending, no repeats"
    assert keep == subtree(tree, new_root)
    # ancestry closed: every kept node but the new root has its parent kept
    assert all(tree.parents[k] in keep for k in keep[1:])
    # nothing of the accepted path is kept
    assert not set(keep) & set(path)


def test_plan_prune_table() -> None:
    # 0:[a] -> 1:[b], 2:[c]; 1 -> 3:[d]; 2 -> 4:[d], 5:[e]; 4 -> 6:[f]
    tree = DraftTree((9, 1, 2, 3, 3, 4, 5), (-1, 0, 0, 1, 2, 2, 4), (0, -1, -2, -3, -3, -4, -5))
    assert plan_prune(tree, [0], 1) == (1, 3)
    assert plan_prune(tree, [0], 2) == (2, 4, 5, 6)
    assert plan_prune(tree, [0, 2], 3) == (4, 6)
    assert plan_prune(tree, [0, 2], 4) == (5,)
    assert plan_prune(tree, [0, 2, 4], 5) == (6,)
    assert plan_prune(tree, [0, 2, 4, 6], 5) == ()
    assert plan_prune(tree, [0], 3) == (), "token 3 is in the tree, but not under the root"
    assert plan_prune(single_root(7), [0], 7) == ()


# ------------------------------------------------------------------------------------------- prune_tree
@st.composite
def tree_and_keep(draw: st.DrawFn):
    """A tree and a keep set that a prune event can carry: plan_prune's, or any node's subtree."""
    tree = draw(trees(score_ordered=draw(st.booleans())))
    if draw(st.booleans()):
        path = draw(root_paths(tree))
        keep = plan_prune(tree, path, draw(next_tokens(tree, path[-1])))
    else:
        keep = subtree(tree, draw(st.integers(0, len(tree) - 1)))
    return tree, keep


@FAST
@given(tree_and_keep())
def test_prune_tree(case) -> None:
    tree, keep = case
    new = prune_tree(tree, keep)
    assert_valid(new)
    assert len(new) == len(keep)
    if not keep:
        return
    old_depths, new_depths = tree.depths(), new.depths()
    cut = old_depths[keep[0]]
    base = tree.scores[keep[0]]
    assert new.scores[0] == 0.0
    for i, k in enumerate(keep):
        assert new.tokens[i] == tree.tokens[k]
        assert token_path(new, i) == token_path(tree, k)[cut:]
        # absolute positions survive: the committed context grows by the new root's old depth
        assert new_depths[i] + cut == old_depths[k]
        assert new.scores[i] == tree.scores[k] - base
        if i:
            assert new.parents[i] == keep.index(tree.parents[k])
    for i in range(len(keep)):
        for j in range(len(keep)):
            assert math.isclose(
                new.scores[i] - new.scores[j], tree.scores[keep[i]] - tree.scores[keep[j]], abs_tol=1e-9
            )


def test_prune_tree_empty_and_identity() -> None:
    tree = DraftTree((5, 1, 2, 3), (-1, 0, 0, 1), (0.0, -0.5, -1.0, -2.0))
    assert prune_tree(tree, ()) == DraftTree((), (), ())
    assert prune_tree(tree, (0, 1, 2, 3)) == tree
    assert prune_tree(tree, (1, 3)) == DraftTree((1, 3), (-1, 0), (0.0, -1.5))


def test_index_map() -> None:
    assert index_map(6, (2, 4, 5)) == [-1, -1, 0, -1, 1, 2]
    assert index_map(3, (2, 4, 5)) == [-1, -1, 0], "nodes beyond size are ignored"
    assert index_map(4, ()) == [-1, -1, -1, -1]


# ------------------------------------------------------------------------------------------- remap_rows
def check_remap(tree: DraftTree, keep: Sequence[int], first: int, length: int) -> list[tuple[int, int]]:
    """Checks one segment's remap against the pure tree; returns (new index, new parent) per survivor."""
    parents = tree.parents[first : first + length]
    out = remap_rows(first, parents, keep)
    mapping = index_map(len(tree), keep)
    expected_rows = tuple(r for r in range(length) if first + r in keep)
    assert out.rows == expected_rows
    assert len(out.parents) == len(out.rows)
    if not out.rows:
        return []
    pruned = prune_tree(tree, keep)
    result = []
    for i, r in enumerate(out.rows):
        new = mapping[first + r]
        assert new == out.first + i, "surviving rows stay contiguous"
        expected_parent = mapping[parents[r]] if new else -1  # the new root hangs off the context
        assert out.parents[i] == expected_parent
        assert out.parents[i] == pruned.parents[new]
        result.append((new, out.parents[i]))
    return result


@FAST
@given(tree_and_keep(), st.data())
def test_remap_rows_one_segment(case, data) -> None:
    tree, keep = case
    first = data.draw(st.integers(0, len(tree)))
    length = data.draw(st.integers(0, len(tree) - first))
    check_remap(tree, keep, first, length)


@st.composite
def partitions(draw: st.DrawFn, n: int) -> list[tuple[int, int]]:
    """(first, length) of contiguous segments covering 0..n-1 (empty segments allowed)."""
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    bounds = [0, *cuts, n]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]


@FAST
@given(tree_and_keep(), st.data())
def test_remap_rows_partition_concatenates_to_prune_tree(case, data) -> None:
    tree, keep = case
    rows: list[tuple[int, int]] = []
    for first, length in data.draw(partitions(len(tree))):
        rows.extend(check_remap(tree, keep, first, length))
    pruned = prune_tree(tree, keep)
    assert rows == list(enumerate(pruned.parents))


def test_remap_rows_table() -> None:
    # 0 -> 1, 2; 1 -> 3; 2 -> 4, 5; 4 -> 6.  Accept [0], next token = node 2: keep (2, 4, 5, 6).
    parents = (-1, 0, 0, 1, 2, 2, 4)
    keep = (2, 4, 5, 6)
    seg0 = remap_rows(0, parents[0:3], keep)
    assert (seg0.rows, seg0.first, seg0.parents) == ((2,), 0, (-1,))
    seg1 = remap_rows(3, parents[3:6], keep)
    assert (seg1.rows, seg1.first, seg1.parents) == ((1, 2), 1, (0, 0))
    seg2 = remap_rows(6, parents[6:7], keep)
    assert (seg2.rows, seg2.first, seg2.parents) == ((0,), 3, (1,))
    gone = remap_rows(3, parents[3:4], keep)
    assert gone.rows == () and gone.parents == ()
    ended = remap_rows(0, parents, ())
    assert ended.rows == () and ended.parents == ()


# ------------------------------------------------------------------------------------------ merge_trees
@st.composite
def extended(draw: st.DrawFn, tree: DraftTree, vocab: int, max_new: int = 10) -> DraftTree:
    """``tree`` with up to ``max_new`` random nodes appended (distinct tokens under one parent)."""
    tokens, parents, scores = list(tree.tokens), list(tree.parents), list(tree.scores)
    for _ in range(draw(st.integers(0, max_new))):
        parent = draw(st.integers(0, len(tokens) - 1))
        taken = {tokens[i] for i in range(1, len(tokens)) if parents[i] == parent}
        free = sorted(set(range(vocab)) - taken)
        if not free:
            continue
        tokens.append(draw(st.sampled_from(free)))
        parents.append(parent)
        scores.append(scores[parent] - draw(st.sampled_from([0.0, 0.5, 1.0])))
    return DraftTree(tuple(tokens), tuple(parents), tuple(scores))


@st.composite
def merge_cases(draw: st.DrawFn):
    vocab = draw(st.integers(2, 5))
    tree = draw(trees(max_nodes=25, vocab=vocab, score_ordered=draw(st.booleans())))
    root = tree.tokens[0]
    if draw(st.booleans()):
        fresh = draw(trees(max_nodes=25, vocab=vocab, root_token=root, score_ordered=draw(st.booleans())))
    else:  # overlap: an ancestor-closed part of the tree, reordered, plus new nodes
        chosen = [0]
        for i in range(1, len(tree)):
            if tree.parents[i] in chosen and draw(st.booleans()):
                chosen.append(i)
        part = prune_tree(tree, chosen)
        part = renumber(part, draw(topological_orders(part)))
        fresh = draw(extended(part, vocab))
    return tree, fresh


@SLOW
@given(merge_cases())
def test_merge_trees(case) -> None:
    tree, fresh = case
    merged, first = merge_trees(tree, fresh)
    n = len(tree)
    assert first == n
    assert_valid(merged)
    # old nodes keep their indices (tokens, parents and scores)
    assert merged.tokens[:n] == tree.tokens
    assert merged.parents[:n] == tree.parents
    assert merged.scores[:n] == tree.scores
    # every token path of both trees appears exactly once
    paths = all_token_paths(merged)
    assert len(paths) == len(set(paths))
    assert set(paths) == set(all_token_paths(tree)) | set(all_token_paths(fresh))
    # new nodes: fresh's nodes missing from the tree, in fresh's order
    old_paths = set(all_token_paths(tree))
    missing = [j for j in range(len(fresh)) if token_path(fresh, j) not in old_paths]
    assert len(merged) - n == len(missing)
    for k, j in enumerate(missing):
        assert token_path(merged, n + k) == token_path(fresh, j)
        assert merged.scores[n + k] == fresh.scores[j]
    # distinct tokens under one parent still hold
    for kids in merged.children().values():
        assert len({merged.tokens[c] for c in kids}) == len(kids)


@FAST
@given(trees(score_ordered=True), st.data())
def test_merge_with_itself_appends_nothing(tree: DraftTree, data) -> None:
    assert merge_trees(tree, tree) == (tree, len(tree))
    shuffled = renumber(tree, data.draw(topological_orders(tree)))
    assert merge_trees(tree, shuffled) == (tree, len(tree))


def test_merge_table() -> None:
    tree = DraftTree((7, 1, 2, 3), (-1, 0, 0, 1), (0.0, -1.0, -2.0, -3.0))  # paths 7, 71, 72, 713
    fresh = DraftTree((7, 2, 1, 4, 5), (-1, 0, 0, 1, 2), (0.0, -0.5, -1.5, -1.0, -2.0))  # 72 71 724 715
    merged, first = merge_trees(tree, fresh)
    assert first == 4
    assert merged == DraftTree(
        (7, 1, 2, 3, 4, 5), (-1, 0, 0, 1, 2, 1), (0.0, -1.0, -2.0, -3.0, -1.0, -2.0)
    )
    assert merge_trees(single_root(7), single_root(7)) == (single_root(7), 1)


# ----------------------------------------------------------------------------- whole-system simulation
class StageSim:
    """What a verification stage sees: segments (epoch, first, parents) and prune events, nothing else.

    It processes segments in arrival order, keeping a KV region of tree nodes 0..t-1 and their
    ancestor sets, compacted on every event like a real stage."""

    def __init__(self) -> None:
        self.log = PruneLog()
        self.kv: list[int] = []  # node identity held at each tree row of the KV region (for checking)
        self.ancestors: list[frozenset[int]] = []

    def prune(self, event: Prune) -> None:
        self.log.record(event)
        in_cache = [k for k in event.keep if k < len(self.kv)]
        mapping = {old: new for new, old in enumerate(in_cache)}
        self.kv = [self.kv[k] for k in in_cache]
        self.ancestors = [frozenset(mapping[j] for j in self.ancestors[k] if j in mapping) for k in in_cache]

    def process(self, epoch: int, first: int, parents: Sequence[int], ids: Sequence[int]) -> None:
        now = self.log.bring_forward(epoch, first, parents)
        if not now.rows:
            return
        assert now.first == len(self.kv), "segments arrive in tree order"
        for r, parent in zip(now.rows, now.parents, strict=True):
            t = len(self.kv)
            self.ancestors.append((self.ancestors[parent] if parent >= 0 else frozenset()) | {t})
            self.kv.append(ids[r])


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_segments_and_prunes_keep_one_index_space(data) -> None:
    vocab = 4
    counter = iter(range(10**9))
    tree = data.draw(trees(max_nodes=30, vocab=vocab, score_ordered=True), label="tree")
    ids = [next(counter) for _ in range(len(tree))]  # the identity of the node at each tree index
    stage = StageSim()
    in_flight: list[tuple[int, int, tuple[int, ...], list[int]]] = []  # (epoch, first, parents, ids)

    def send(first: int, sizes: Sequence[int]) -> None:
        for size in sizes:
            seg = (stage.log.epoch, first, tree.parents[first : first + size], ids[first : first + size])
            in_flight.append(seg)
            first += size

    send(0, segment_sizes(len(tree), data.draw(st.integers(1, 5)), data.draw(st.integers(2, 16))))
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        op = data.draw(st.sampled_from(["prune", "merge", "process"]))
        if op == "prune" and len(tree):
            path = data.draw(root_paths(tree))
            keep = plan_prune(tree, path, data.draw(next_tokens(tree, path[-1], vocab)))
            event = Prune("r", 0, stage.log.epoch + 1, stage.log.round + (0 if keep else 1), tuple(path),
                          keep, (), -1)
            stage.prune(event)
            ids = [ids[k] for k in keep]
            tree = prune_tree(tree, keep)
            if not keep:  # the round ends: a fresh tree, a fresh fill
                tree = data.draw(trees(max_nodes=20, vocab=vocab, score_ordered=True))
                ids = [next(counter) for _ in range(len(tree))]
                send(0, segment_sizes(len(tree), data.draw(st.integers(1, 4)), 8))
        elif op == "merge" and len(tree):
            fresh = data.draw(trees(max_nodes=15, vocab=vocab, root_token=tree.tokens[0], score_ordered=True))
            tree, first = merge_trees(tree, fresh)
            ids += [next(counter) for _ in range(len(tree) - first)]
            send(first, [len(tree) - first])
        elif op == "process" and in_flight:
            stage.process(*in_flight.pop(0))
        # every in-flight segment, brought forward, names the node the pure tree gives each row
        for epoch, first, parents, seg_ids in in_flight:
            now = stage.log.bring_forward(epoch, first, parents)
            alive = [i for i in seg_ids if i in ids]
            assert [seg_ids[r] for r in now.rows] == alive
            for i, (r, parent) in enumerate(zip(now.rows, now.parents, strict=True)):
                node = now.first + i
                assert ids[node] == seg_ids[r]
                assert parent == tree.parents[node]
        # the stage's KV region holds tree nodes 0..t-1, with the tree's ancestor sets
        assert stage.kv == ids[: len(stage.kv)]
        assert stage.ancestors == ancestor_sets(tree.parents)[: len(stage.kv)]


# ------------------------------------------------------------------------------------------ Renumbering
@FAST
@given(st.data())
def test_late_nodes_survive_iff_their_parent_does(data) -> None:
    """Deciding over a known prefix, then renumbering the whole tree, prunes as deciding over the whole tree."""
    tree = data.draw(trees(max_nodes=30, score_ordered=True), label="tree")
    known = data.draw(st.integers(1, len(tree)), label="known")
    head = DraftTree(tree.tokens[:known], tree.parents[:known], tree.scores[:known])
    path = data.draw(root_paths(head))
    token = data.draw(next_tokens(head, path[-1]))
    keep = plan_prune(head, path, token)
    now = Renumbering(keep, known).remap(0, tree.parents)
    whole = plan_prune(tree, path, token) if keep else ()
    assert now == remap_rows(0, tree.parents, whole)
    assert renumbered(tree, now) == prune_tree(tree, whole)


@FAST
@given(st.data())
def test_renumbering_in_pieces_equals_renumbering_whole(data) -> None:
    tree = data.draw(trees(max_nodes=30, score_ordered=True), label="tree")
    known = data.draw(st.integers(1, len(tree)))
    head = DraftTree(tree.tokens[:known], tree.parents[:known], tree.scores[:known])
    path = data.draw(root_paths(head))
    keep = plan_prune(head, path, data.draw(next_tokens(head, path[-1])))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(tree)), max_size=4)))
    whole = Renumbering(keep, known).remap(0, tree.parents)
    pieces = Renumbering(keep, known)
    rows: list[int] = []
    parents: list[int] = []
    for start, end in zip([0, *cuts], [*cuts, len(tree)], strict=True):
        part = pieces.remap(start, tree.parents[start:end])
        rows += [start + r for r in part.rows]
        parents += part.parents
    assert (tuple(rows), tuple(parents)) == (whole.rows, whole.parents)


def test_renumbering_table() -> None:
    # 0 -> 1 -> 2; 0 -> 3; known = 4. Late: 4 under 1, 5 under 3, 6 under 4, 7 under 2.
    parents = (-1, 0, 1, 0, 1, 3, 4, 2)
    event = Renumbering((1, 2), known=4)  # 1 is the next root: 1 -> 0, 2 -> 1
    assert event.remap(0, parents[:4]) == RemappedRows((1, 2), 0, (-1, 0))
    assert event.remap(4, parents[4:]) == RemappedRows((0, 2, 3), 2, (0, 2, 1))  # 4 -> 2, 6 -> 3, 7 -> 4
    assert event.remap(6, parents[6:]) == RemappedRows((0, 1), 3, (2, 1)), "asked again: the same answer"


def test_renumbering_needs_late_nodes_in_order() -> None:
    event = Renumbering((1,), known=2)
    with pytest.raises(ValueError, match="brought before"):
        event.remap(3, (1,))


def test_a_round_end_drops_known_and_late_nodes() -> None:
    assert Renumbering((), known=3).remap(0, (-1, 0, 0, 1, 2)) == RemappedRows((), 0, ())


def test_without_known_every_node_not_kept_is_dropped() -> None:
    parents = (-1, 0, 1, 0, 1)
    assert Renumbering((1, 2)).remap(0, parents) == remap_rows(0, parents, (1, 2))
