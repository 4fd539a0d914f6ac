"""Rows of several requests in one forward: each request's hidden states and cache bitwise as if alone."""

from __future__ import annotations

import pytest
import torch

from common.models.modeling import KVCache, ModelSlice, causal_attend, load_slice
from common.models.modeling.batch import Rows, forward_many
from tests.support.tiny_models import make_tiny_model

VOCAB = 320
HISTORY = (5, 17, 40)  # committed context of each request


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def slices(request, tmp_path_factory) -> tuple[ModelSlice, ModelSlice]:
    """The first and the second half of a tiny model (token ids in; hidden states in)."""
    path = make_tiny_model(tmp_path_factory.mktemp("batch"), seed=3, vocab=VOCAB)
    first = load_slice(path, (0, 1), with_embedding=True, with_head=False, dtype=request.param)
    second = load_slice(path, (1, 2), with_embedding=False, with_head=False, dtype=request.param)
    return first, second


def _cache_with_history(model: ModelSlice, length: int, seed: int) -> KVCache:
    cache = model.new_cache()
    gen = torch.Generator().manual_seed(seed)
    model(_inputs(model, length, gen), torch.arange(length), causal_attend(0, length), cache)
    return cache


def _inputs(model: ModelSlice, n: int, gen: torch.Generator) -> torch.Tensor:
    if model.with_embedding:
        return torch.randint(3, VOCAB, (n,), generator=gen)
    return torch.randn(n, model.spec.hidden_size, generator=gen).to(model.dtype)


def _parts(model: ModelSlice, caches: list[KVCache]) -> list[Rows]:
    """A prefill chunk, a draft-tree segment (tree mask) and an autoregressive row, one per request."""
    gen = torch.Generator().manual_seed(9)
    past = [c.length for c in caches]
    tree = torch.zeros(4, past[1] + 4, dtype=torch.bool)
    tree[:, : past[1]] = True
    for row, parent in enumerate([-1, 0, 0, 2]):  # root, two children, a grandchild
        tree[row, past[1] + row] = True
        while parent >= 0:
            tree[row, past[1] + parent] = True
            parent = [-1, 0, 0, 2][parent]
    return [
        Rows(_inputs(model, 6, gen), torch.arange(past[0], past[0] + 6), causal_attend(past[0], 6), caches[0]),
        Rows(_inputs(model, 4, gen), torch.tensor([past[1], past[1] + 1, past[1] + 1, past[1] + 2]), tree, caches[1]),
        Rows(_inputs(model, 1, gen), torch.tensor([past[2]]), None, caches[2]),
    ]


@pytest.mark.parametrize("which", [0, 1])
def test_a_shared_forward_gives_each_request_what_it_gets_alone(slices, which):
    model = slices[which]
    alone_caches = [_cache_with_history(model, n, seed=i) for i, n in enumerate(HISTORY)]
    shared_caches = [_cache_with_history(model, n, seed=i) for i, n in enumerate(HISTORY)]
    alone = [model(p.inputs, p.positions, p.attend, p.cache) for p in _parts(model, alone_caches)]
    shared = forward_many(model, _parts(model, shared_caches))
    for a, b in zip(alone, shared, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # The caches hold the same keys and values: a next row over each sees the same context.
    for i, (a_cache, b_cache) in enumerate(zip(alone_caches, shared_caches, strict=True)):
        assert a_cache.length == b_cache.length
        step = _inputs(model, 1, torch.Generator().manual_seed(i))
        position = torch.tensor([a_cache.length])
        assert torch.equal(model(step, position, None, a_cache), model(step, position, None, b_cache))


def test_a_bad_part_leaves_every_cache_as_it_was(slices):
    model = slices[0]
    caches = [_cache_with_history(model, n, seed=i) for i, n in enumerate(HISTORY)]
    parts = _parts(model, caches)
    bad = Rows(parts[1].inputs, parts[1].positions, parts[1].attend[:, :-1], parts[1].cache)  # a mask too short
    with pytest.raises(ValueError, match="attend"):
        forward_many(model, [parts[0], bad, parts[2]])
    assert [c.length for c in caches] == list(HISTORY)
    assert len(forward_many(model, parts)) == 3  # nothing half-written blocks the next forward


def test_two_parts_may_not_share_a_cache(slices):
    model = slices[0]
    cache = _cache_with_history(model, 3, seed=0)
    row = Rows(torch.tensor([7]), torch.tensor([3]), None, cache)
    with pytest.raises(ValueError, match="cache of its own"):
        forward_many(model, [row, row])
