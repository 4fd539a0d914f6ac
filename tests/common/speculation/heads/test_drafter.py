"""HeadTreeDrafter: cached tree drafting equals recomputing the head from scratch; tree invariants."""

import pytest
import torch

from common.models.modeling import causal_attend
from common.speculation.drafting import TreeShape
from common.speculation.heads import FeaturePairs, HeadTreeDrafter
from common.speculation.heads.model import DraftHead, new_head
from common.speculation.tree import single_root
from tests.common.speculation.heads.conftest import HIDDEN


def _pairs(n: int, seed: int = 0) -> FeaturePairs:
    gen = torch.Generator().manual_seed(seed)
    return FeaturePairs(torch.randn(n, HIDDEN, generator=gen), tuple(torch.randint(3, 259, (n,), generator=gen).tolist()))


def _greedy_chain(head: DraftHead, pairs: FeaturePairs, depth: int) -> list[int]:
    """Reference: every step reruns all pairs through the head without any cached row."""
    features, tokens, chain = list(pairs.features), list(pairs.tokens), []
    for _ in range(depth):
        n = len(tokens)
        out = head(torch.stack(features), torch.tensor(tokens), torch.arange(n), causal_attend(0, n), head.new_cache())
        token = int(head.full_ids(head.logits(out[-1:]).argmax(-1))[0])
        features.append(out[-1])
        tokens.append(token)
        chain.append(token)
    return chain


def _drafter(head: DraftHead, pairs: FeaturePairs) -> HeadTreeDrafter:
    drafter = HeadTreeDrafter(head)
    drafter.extend_context(pairs)
    return drafter


@pytest.mark.parametrize("draft_ids", [None, torch.arange(3, 200, 2)])
def test_a_chain_draft_equals_recomputing_from_scratch(tiny_base, draft_ids) -> None:
    head = new_head(tiny_base, intermediate_size=48, draft_ids=draft_ids, dtype=torch.float32, seed=2)
    pairs = _pairs(9)
    drafter = _drafter(head, pairs)
    tree = drafter.draft(pairs.tokens[-1], TreeShape(nodes=5, depth=5, top_k=1))
    assert list(tree.tokens[1:]) == _greedy_chain(head, pairs, 5)
    assert tree.parents == (-1, 0, 1, 2, 3, 4)
    grown = single_root(pairs.tokens[-1])
    for _ in range(5):
        grown = drafter.grow_level(grown, width=1, top_k=1)
    assert grown.tokens == tree.tokens
    assert grown.scores == pytest.approx(tree.scores, abs=1e-5)
    assert drafter.context_length == 9


def test_a_tree_draft_keeps_the_tree_invariants(head) -> None:
    drafter = _drafter(head, _pairs(6))
    tree = drafter.draft(7, TreeShape(nodes=12, depth=4, top_k=3))
    assert len(tree) == 13 and tree.tokens[0] == 7
    assert all(tree.scores[i] <= tree.scores[tree.parents[i]] + 1e-6 for i in range(1, len(tree)))
    assert list(tree.scores[1:]) == sorted(tree.scores[1:], reverse=True)
    assert drafter.draft(7, TreeShape(nodes=12, depth=4, top_k=3)) == tree  # deterministic, context untouched


def test_growth_of_a_drafted_tree_matches_the_draft(head) -> None:
    drafter = _drafter(head, _pairs(6, seed=1))
    full = drafter.draft(7, TreeShape(nodes=30, depth=3, top_k=2))
    partial = drafter.draft(7, TreeShape(nodes=2, depth=1, top_k=2))
    grown = drafter.grow(partial, [1, 2], width=4, top_k=2)
    kids = {(full.tokens[full.parents[i]], full.tokens[i]) for i in range(1, len(full)) if full.depths()[i] == 2}
    assert {(grown.tokens[grown.parents[i]], grown.tokens[i]) for i in range(3, len(grown))} == kids


def test_growth_never_reproposes_a_child_and_pending_pairs_ride_along(head) -> None:
    pairs = _pairs(8, seed=2)
    first = FeaturePairs(pairs.features[:5], pairs.tokens[:5])
    rest = FeaturePairs(pairs.features[5:], pairs.tokens[5:])
    drafter = _drafter(head, first)
    tree = single_root(pairs.tokens[-1])
    tree = drafter.grow_best(tree, leaves=1, width=2, top_k=2, pending=rest)
    tree = drafter.grow(tree, [0], width=2, top_k=2)  # one spare proposal: one fresh child beside the two
    assert len(set(zip(tree.parents, tree.tokens, strict=True))) == len(tree) == 4
    assert drafter.context_length == 8
    reference = _drafter(head, pairs).grow_best(single_root(pairs.tokens[-1]), leaves=1, width=3, top_k=3)
    assert tree.tokens == reference.tokens


def test_context_in_chunks_equals_one_pass(head) -> None:
    pairs = _pairs(11, seed=3)
    one, chunked = HeadTreeDrafter(head), HeadTreeDrafter(head)
    one.extend_context(pairs)
    chunked.extend_context(pairs, chunk=4)
    shape = TreeShape(nodes=8, depth=3, top_k=2)
    a, b = one.draft(1, shape), chunked.draft(1, shape)
    assert a.tokens == b.tokens and a.scores == pytest.approx(b.scores, abs=1e-5)
    one.reset()
    assert one.context_length == 0


def _session(head, monkeypatch, garbage_rows: int) -> list:
    """Draft, commit part of a drafted path, grow the kept subtree, repeat: the trees produced."""
    from common.speculation.heads import drafter as drafter_module

    monkeypatch.setattr(drafter_module, "GARBAGE_ROWS", garbage_rows)
    pairs = _pairs(12, seed=4)
    drafter = _drafter(head, pairs)
    root, trees = pairs.tokens[-1], []
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        tree = drafter.draft(root, TreeShape(nodes=12, depth=4, top_k=3))
        trees.append(tree)
        child = tree.parents.index(0)  # the best child of the root is accepted, then a next token
        accepted = (tree.tokens[child], tree.tokens[tree.parents.index(child)] if child in tree.parents else 9)
        drafter.extend_context(FeaturePairs(torch.randn(2, HIDDEN, generator=gen), accepted))
        root = accepted[-1]
        trees.append(drafter.grow_best(single_root(root), leaves=1, width=3, top_k=3))
    return trees


def test_compaction_renumbers_rows_without_changing_any_draft(head, monkeypatch) -> None:
    compacted = _session(head, monkeypatch, garbage_rows=1)
    kept = _session(head, monkeypatch, garbage_rows=10**6)
    for a, b in zip(compacted, kept, strict=True):
        assert a.tokens == b.tokens and a.parents == b.parents
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_rows_of_the_kept_subtree_are_reused(head) -> None:
    pairs = _pairs(5, seed=5)
    drafter = _drafter(head, pairs)
    tree = drafter.draft(pairs.tokens[-1], TreeShape(nodes=10, depth=3, top_k=2))
    child = tree.parents.index(0)
    grandchildren = [i for i in range(len(tree)) if tree.parents[i] == child]
    length = drafter._cache.length
    drafter.extend_context(FeaturePairs(torch.randn(1, HIDDEN), (tree.tokens[child],)))
    assert drafter._cache.length == length + 1  # one committed pair, no node row recomputed
    kept = single_root(tree.tokens[child]).appended([tree.tokens[i] for i in grandchildren], [0, 0], [-1.0, -2.0])
    grown = drafter.grow(kept, [1, 2], width=4, top_k=2)
    assert drafter._cache.length == length + 1  # the kept nodes' features were cached
    assert len(grown) == 7


@pytest.mark.parametrize("draft_ids", [None, torch.arange(3, 200, 2)])
def test_proposals_leave_the_device_in_one_copy_and_keep_every_bit(tiny_base, draft_ids) -> None:
    head = new_head(tiny_base, intermediate_size=48, draft_ids=draft_ids, dtype=torch.float32, seed=2)
    features = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(4))
    top = torch.topk(torch.log_softmax(head.logits(features), dim=-1), 4, dim=-1)
    values, ids = HeadTreeDrafter(head)._proposals(features, 4)
    assert values == top.values.tolist() and ids == head.full_ids(top.indices).tolist()
    assert all(type(t) is int for row in ids for t in row) and all(type(v) is float for row in values for v in row)
