"""TreeDrafter: kept tree rows draft exactly as re-forwarding does; commits compact the cache; reduced vocabulary."""

from __future__ import annotations

import random

import pytest
import torch

from common.models.modeling import KVCache, load_slice
from common.speculation.drafting import ModelDrafters, TreeDrafter, TreeShape
from common.speculation.tree import DraftTree, plan_prune, prune_tree
from tests.support.tiny_models import make_tiny_model

SHAPE = TreeShape(nodes=10, depth=4, top_k=3)
PROMPT = [5, 17, 33, 8, 120, 64, 9, 250, 31, 7, 44, 3]


@pytest.fixture(scope="module")
def draft_model(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("draft"), family="qwen2", num_layers=2, seed=4)
    return load_slice(path, None, with_embedding=True, with_head=True, dtype=torch.float32)


def _started(model, keep: bool = True) -> TreeDrafter:
    drafter = TreeDrafter(model, keep_tree_rows=keep)
    drafter.extend_context(PROMPT)
    return drafter


def _verdict(tree: DraftTree, rng: random.Random) -> tuple[list[int], tuple[int, ...]]:
    """A made-up verification: a random accepted path, then a next token in the tree or not."""
    children = tree.children()
    path = [0]
    while path[-1] in children and rng.random() < 0.7:
        path.append(rng.choice(children[path[-1]]))
    below = [tree.tokens[c] for c in children.get(path[-1], [])]
    next_token = rng.choice(below) if below and rng.random() < 0.8 else rng.choice([t for t in range(3, 300) if t not in below])
    new_tokens = [tree.tokens[i] for i in path[1:]] + [next_token]
    return new_tokens, plan_prune(tree, path, next_token)


def _same_tree(a: DraftTree, b: DraftTree) -> None:
    assert a.tokens == b.tokens and a.parents == b.parents
    torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-4, atol=1e-4)


def _cache_rows(cache: KVCache, rows: int) -> list[torch.Tensor]:
    """Keys and values of the first ``rows`` rows of every layer."""
    out = []
    for layer in range(cache.num_layers):
        empty = torch.empty(cache._kv_heads, 0, cache._head_dim)
        k, v = cache.extend(layer, empty, empty)
        cache.rollback()
        out += [k[:, :rows].clone(), v[:, :rows].clone()]
    return out


def test_kept_rows_grow_the_same_trees_as_reforwarding(draft_model) -> None:
    kept, reforward = _started(draft_model), _started(draft_model, keep=False)
    rng = random.Random(1)
    tree_k = kept.draft(PROMPT[-1], SHAPE)
    tree_r = reforward.draft(PROMPT[-1], SHAPE)
    _same_tree(tree_k, tree_r)
    assert kept.tree_rows > 0 and reforward.tree_rows == 0  # expanded nodes keep their rows
    pending: list[int] = []
    for _ in range(12):
        tree_k = kept.grow_best(tree_k, 2, 4, 3, pending)
        tree_r = reforward.grow_best(tree_r, 2, 4, 3, pending)
        _same_tree(tree_k, tree_r)
        assert kept.cache.length == kept.context_length + kept.tree_rows
        pending, keep = _verdict(tree_k, rng)
        if keep:
            tree_k, tree_r = prune_tree(tree_k, keep), prune_tree(tree_r, keep)
        else:  # the round ends: a fresh draft from the next token
            kept.extend_context(pending)
            reforward.extend_context(pending)
            tree_k, tree_r = kept.draft(pending[-1], SHAPE), reforward.draft(pending[-1], SHAPE)
            _same_tree(tree_k, tree_r)
            pending = []
    assert kept.context_length == reforward.context_length
    assert kept.rows_forwarded < reforward.rows_forwarded  # no ancestor or accepted token forwarded twice


def test_kept_rows_grow_the_same_levels_as_reforwarding(draft_model) -> None:
    """PipeDec growth, and a re-draft merged over kept rows, from the same root."""
    kept, reforward = _started(draft_model), _started(draft_model, keep=False)
    from common.speculation.tree import single_root

    tree_k = tree_r = single_root(PROMPT[-1])
    for _ in range(4):
        tree_k, tree_r = kept.grow_level(tree_k, 3, 2), reforward.grow_level(tree_r, 3, 2)
        _same_tree(tree_k, tree_r)
    _same_tree(kept.draft(PROMPT[-1], SHAPE), reforward.draft(PROMPT[-1], SHAPE))


def test_a_commit_compacts_the_accepted_rows_into_context(draft_model) -> None:
    kept = _started(draft_model)
    tree = kept.draft(PROMPT[-1], SHAPE)
    tree = kept.grow_best(tree, 3, 6, 3)
    children = tree.children()
    path = [0]
    while path[-1] in children and len(path) < 3:
        path.append(children[path[-1]][0])
    accepted = [tree.tokens[i] for i in path[1:]]
    rows_before = kept.cache.length
    kept.extend_context(accepted)  # every accepted node was expanded: no forward needed
    fresh = _started(draft_model)
    fresh.extend_context(accepted)
    assert kept.context_length == fresh.context_length == len(PROMPT) + len(accepted)
    assert kept.cache.length < rows_before  # pruned branches dropped
    for got, want in zip(_cache_rows(kept.cache, kept.context_length), _cache_rows(fresh.cache, fresh.context_length),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The subtree below the accepted path stays and grows as a fresh drafter grows it.
    subtree = prune_tree(tree, plan_prune(tree, path[:-1], accepted[-1]))
    _same_tree(kept.grow_best(subtree, 2, 4, 3), fresh.grow_best(subtree, 2, 4, 3))


def test_a_reduced_vocabulary_proposes_only_its_tokens(draft_model) -> None:
    draft_ids = torch.arange(3, 300, 3)
    allowed = set(draft_ids.tolist())
    drafters = ModelDrafters(draft_model, draft_ids)
    drafter = drafters.take()
    drafter.extend_context(PROMPT)
    tree = drafter.draft(PROMPT[-1], SHAPE)
    for _ in range(3):
        tree = drafter.grow_best(tree, 2, 4, 3)
    assert len(tree) > SHAPE.nodes
    assert set(tree.tokens[1:]) <= allowed
    full = _started(draft_model).draft(PROMPT[-1], SHAPE)
    assert not set(full.tokens[1:]) <= allowed  # the full vocabulary would have proposed others
