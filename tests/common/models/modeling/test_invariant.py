"""Row-invariant numerics in bfloat16: a row's result is bitwise what it gets alone, whatever rides with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from common.models.modeling import ModelSlice, causal_attend, invariant, load_slice
from common.models.modeling.blocked_attention import KEY_BLOCK, blocked_attention
from tests.support.tiny_models import make_tiny_model

BF16 = torch.bfloat16
VOCAB = 320


@pytest.mark.parametrize(
    ("rows", "blocks", "expected"),
    [
        (0, (1, 32), []),
        (1, (1, 32), [1]),
        (20, (1, 32), [32]),
        (20, (1, 32, True), [20]),
        (64, (1, 32), [32, 32]),
        (7, (1, 2), [2, 2, 2, 1]),
        (5, (1, 1), [1] * 5),
        (1, (2, 32), [2]),
        (1, (2, 32, True), [2]),
        (7, (2, 32), [8]),
        (37, (4, 16), [16, 16, 8]),
        (300, (1, 256), [256, 32, 16]),
        (300, (1, 256, True), [256, 32, 12]),
        (200, (2, 256, True), [128, 64, 8]),
    ],
)
def test_row_blocks_split(rows: int, blocks: tuple[int, ...], expected: list[int]) -> None:
    assert invariant.RowBlocks(*blocks).split(rows) == expected


@pytest.mark.parametrize(("features", "bias"), [((64, 160), False), ((160, 64), True), ((576, 1536), False)])
def test_linear_rows_equal_their_lone_result(features: tuple[int, int], bias: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    layer = nn.Linear(*features, bias=bias, dtype=BF16).requires_grad_(False)
    x = torch.randn(70, features[0], generator=gen).to(BF16)
    alone = torch.cat([invariant.linear(layer, x[i : i + 1]) for i in range(70)])
    for n in (1, 5, 16, 33, 64, 70):
        for start in (0, 70 - n):
            assert torch.equal(invariant.linear(layer, x[start : start + n]), alone[start : start + n])


def test_linear_writes_each_block_where_the_split_puts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks written in place, the last one padded with zero rows, the bias added after."""
    gen = torch.Generator().manual_seed(3)
    layer = nn.Linear(48, 40, bias=True, dtype=BF16).requires_grad_(False)
    layer.bias.copy_(torch.randn(40, generator=gen))
    x = torch.randn(37, 48, generator=gen).to(BF16)
    monkeypatch.setattr(invariant, "probe_row_blocks", lambda *key: invariant.RowBlocks(4, 16))
    padded = torch.cat((x, x.new_zeros(3, 48)))
    expected = torch.cat([torch.mm(padded[s : s + n], layer.weight.t()) for s, n in ((0, 16), (16, 16), (32, 8))])
    assert torch.equal(invariant.linear(layer, x), expected[:37] + layer.bias)


@pytest.mark.parametrize("features", [(64, 64), (96, 64), (576, 1536)])
def test_probe_answers_a_range_of_powers_of_two(features: tuple[int, int]) -> None:
    blocks = invariant.probe_row_blocks(*features, BF16, "cpu", torch.get_num_threads())
    assert 1 <= blocks.smallest <= blocks.largest <= invariant.LARGEST_BLOCK_ROWS
    assert blocks.smallest & (blocks.smallest - 1) == 0 and blocks.largest & (blocks.largest - 1) == 0


def _attend_alone(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: list[int]) -> torch.Tensor:
    """A lone row over a cache holding just ``slots``, in that order: the autoregressive case."""
    index = torch.tensor(slots)
    return invariant.attention(q, keys[:, index], values[:, index], None)


def test_attention_ignores_invisible_keys_and_their_slots() -> None:
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(4, 3, 16, generator=gen).to(BF16)  # [Hq, L, D]
    keys = torch.randn(2, 300, 16, generator=gen).to(BF16)  # [Hkv, T, D]
    values = torch.randn(2, 300, 16, generator=gen).to(BF16)
    visible = [list(range(200)), [*range(150), 210, 250, 299], [*range(100), 205]]
    attend = torch.zeros(3, 300, dtype=torch.bool)
    for i, slots in enumerate(visible):
        attend[i, slots] = True
    together = invariant.attention(q, keys, values, attend)
    for i, slots in enumerate(visible):
        assert torch.equal(together[:, i : i + 1], _attend_alone(q[:, i : i + 1], keys, values, slots))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_linear_rows_equal_alone_at_any_row_count(rows: int, seed: int) -> None:
    """Any row count, blocks wider than 32 rows included: each row as it is alone."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(96, 80, bias=True, dtype=BF16).requires_grad_(False)
    layer.weight.copy_(torch.randn(80, 96, generator=gen))
    x = torch.randn(rows, 96, generator=gen).to(BF16)
    together = invariant.linear(layer, x)
    for i in sorted({0, rows - 1, rows // 2, *torch.randint(0, rows, (6,), generator=gen).tolist()}):
        assert torch.equal(together[i : i + 1], invariant.linear(layer, x[i : i + 1]))


def test_widest_block_is_a_power_of_two_up_to_256() -> None:
    widest = invariant.probe_widest_block(80, 96, BF16, "cpu", torch.get_num_threads())
    assert invariant.LARGEST_BLOCK_ROWS <= widest <= invariant.WIDEST_BLOCK_ROWS
    assert widest & (widest - 1) == 0


def _random_attend(gen: torch.Generator, rows: int, total: int, kind: int) -> torch.Tensor:
    """0: a causal chunk over a cached prefix; 1: tree rows (a shared prefix plus scattered slots);
    2: scattered slots anywhere (nodes interleaved in the cache); every row sees slot 0."""
    prefix = total - rows
    if kind == 0:
        return causal_attend(prefix, rows)
    attend = torch.rand(rows, total, generator=gen) < torch.rand(rows, 1, generator=gen)
    if kind == 1:
        attend[:, : torch.randint(0, prefix + 1, (1,), generator=gen).item()] = True
    attend[:, 0] = True
    return attend


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 40), context=st.integers(0, 300), kind=st.integers(0, 2), group=st.sampled_from([1, 2, 6, 7]),
       kv_heads=st.integers(1, 2), dim=st.sampled_from([16, 64, 128]), seed=st.integers(0, 2**16))
def test_attention_rows_equal_alone_for_random_rows_and_slots(rows, context, kind, group, kv_heads, dim, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    total = context + rows
    q = torch.randn(group * kv_heads, rows, dim, generator=gen)
    q[..., 0] *= 16  # a large term: another summation order shows in the low bits
    q = q.to(BF16)
    keys = torch.randn(kv_heads, total, dim, generator=gen).to(BF16)
    values = torch.randn(kv_heads, total, dim, generator=gen).to(BF16)
    attend = _random_attend(gen, rows, total, kind)
    together = invariant.attention(q, keys, values, attend)
    for i in range(rows):
        slots = attend[i].nonzero()[:, 0]
        alone = invariant.attention(q[:, i : i + 1], keys[:, slots], values[:, slots], None)
        assert torch.equal(together[:, i : i + 1], alone), f"row {i} of {rows}"
    reference = F.scaled_dot_product_attention(q.float()[None], keys.float()[None], values.float()[None],
                                               attn_mask=attend, enable_gqa=group > 1)[0]
    torch.testing.assert_close(together.float(), reference, rtol=0, atol=2e-2)


def test_attention_tile_is_probed_on_this_machine() -> None:
    """The fast path is taken here (else every row runs alone, which the tests above would not time)."""
    tile = invariant.probe_attention_tile(6, 2, 128, "cpu", torch.get_num_threads())
    assert tile in invariant.TILE_HEIGHTS


@pytest.mark.parametrize("tile", invariant.TILE_HEIGHTS)
def test_blocked_attention_keeps_every_tile_row_invariant_over_many_blocks(tile: int) -> None:
    gen = torch.Generator().manual_seed(tile)
    rows, total = 33, 5 * KEY_BLOCK + 3
    q = torch.randn(4, rows, 32, generator=gen).to(BF16)
    keys = torch.randn(2, total, 32, generator=gen).to(BF16)
    values = torch.randn(2, total, 32, generator=gen).to(BF16)
    attend = _random_attend(gen, rows, total, 1)
    together = blocked_attention(q, keys, values, attend, tile)
    for i in range(rows):
        slots = attend[i].nonzero()[:, 0]
        assert torch.equal(together[:, i : i + 1],
                           blocked_attention(q[:, i : i + 1], keys[:, slots], values[:, slots], None, tile))


@settings(max_examples=60, deadline=None)
@given(context=st.integers(1, 300), group=st.sampled_from([1, 2, 6, 7, 12]), kv_heads=st.integers(1, 2),
       dim=st.sampled_from([16, 128]), tile=st.sampled_from(invariant.TILE_HEIGHTS),
       dtype=st.sampled_from([BF16, torch.float32]), seed=st.integers(0, 2**16))
def test_one_row_seeing_every_key_takes_a_shorter_path_to_the_same_bits(context, group, kv_heads, dim, tile, dtype,
                                                                         seed) -> None:
    """An autoregressive step (one row, no mask) skips the general path's mask arithmetic: the same bits as that
    path given the row's all-visible mask, and its query left as it was."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(group * kv_heads, 1, dim, generator=gen)
    q[..., 0] *= 16
    q = q.to(dtype)
    before = q.clone()
    keys = torch.randn(kv_heads, context, dim, generator=gen).to(dtype)
    values = torch.randn(kv_heads, context, dim, generator=gen).to(dtype)
    every_key = torch.ones(1, context, dtype=torch.bool)
    assert torch.equal(blocked_attention(q, keys, values, None, tile), blocked_attention(q, keys, values, every_key, tile))
    assert torch.equal(q, before)


def test_rows_of_other_requests_attend_to_their_own_caches() -> None:
    """Rows from two requests, each with its own keys, in one call: each as it is alone."""
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(4, 7, 16, generator=gen).to(BF16)
    sources = []
    for rows, total in ((3, 80), (4, 150)):
        keys = torch.randn(2, total, 16, generator=gen).to(BF16)
        values = torch.randn(2, total, 16, generator=gen).to(BF16)
        sources.append(invariant.KeySource(rows, keys, values, causal_attend(total - rows, rows)))
    together = invariant.attention_by_source(q, sources)
    start = 0
    for source in sources:
        for i in range(source.rows):
            slots = source.attend[i].nonzero()[:, 0]
            alone = invariant.attention(q[:, start + i : start + i + 1], source.keys[:, slots],
                                        source.values[:, slots], None)
            assert torch.equal(together[:, start + i : start + i + 1], alone)
        start += source.rows
    with pytest.raises(ValueError, match="cover 7 rows"):
        invariant.attention_by_source(q[:, :5], sources)


def test_rows_alone_is_the_fallback_without_a_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(invariant, "probe_attention_tile", lambda *key: None)
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(4, 5, 16, generator=gen).to(BF16)
    keys = torch.randn(2, 60, 16, generator=gen).to(BF16)
    values = torch.randn(2, 60, 16, generator=gen).to(BF16)
    attend = causal_attend(55, 5)
    together = invariant.attention(q, keys, values, attend)
    for i in range(5):
        assert torch.equal(together[:, i : i + 1],
                           invariant.attention(q[:, i : i + 1], keys[:, : 56 + i], values[:, : 56 + i], None))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelSlice]:
    root = tmp_path_factory.mktemp("invariant_models")
    kinds = {"llama": {}, "qwen2": {"family": "qwen2"}}
    return {
        name: load_slice(make_tiny_model(root / name, seed=i, vocab=VOCAB, **kw), None, with_embedding=True,
                         with_head=True, dtype=BF16)
        for i, (name, kw) in enumerate(kinds.items())
    }


def _one_by_one(model: ModelSlice, ids: torch.Tensor) -> torch.Tensor:
    cache = model.new_cache()
    return torch.cat([model(ids[i : i + 1], torch.tensor([i]), None, cache) for i in range(ids.numel())])


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("chunk", [3, 16, 64, 100])
def test_prefill_chunks_equal_autoregressive_rows(models: dict[str, ModelSlice], kind: str, chunk: int) -> None:
    model = models[kind]
    ids = torch.randint(0, VOCAB, (100,), generator=torch.Generator().manual_seed(3))
    expected = _one_by_one(model, ids)
    cache, hidden = model.new_cache(initial_capacity=8), []
    for start in range(0, 100, chunk):
        n = min(chunk, 100 - start)
        hidden.append(model(ids[start : start + n], torch.arange(start, start + n), causal_attend(start, n), cache))
    assert torch.equal(torch.cat(hidden), expected)
    assert torch.equal(model.greedy_tokens(torch.cat(hidden)), model.greedy_tokens(expected))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_tree_rows_and_compacted_cache_equal_autoregressive_rows(models: dict[str, ModelSlice], kind: str) -> None:
    """Tree nodes interleaved in the cache, then the accepted path compacted: every row as if alone."""
    model = models[kind]
    gen = torch.Generator().manual_seed(4)
    context = torch.randint(0, VOCAB, (40,), generator=gen)
    tokens = torch.randint(0, VOCAB, (9,), generator=gen)
    parents = [-1, 0, 0, 1, 2, 3, 1, 5, 7]  # paths: 0-1-3-5-7-8 and branches
    paths: list[list[int]] = []
    for i, parent in enumerate(parents):
        paths.append([*(paths[parent] if parent >= 0 else []), i])
    cache = model.new_cache()
    model(context, torch.arange(40), causal_attend(0, 40), cache)
    attend = torch.zeros(9, 49, dtype=torch.bool)
    attend[:, :40] = True
    for i, path in enumerate(paths):
        attend[i, [40 + j for j in path]] = True
    positions = torch.tensor([40 + len(p) - 1 for p in paths])
    tree = model(tokens, positions, attend, cache)
    for node, path in enumerate(paths):
        alone = _one_by_one(model, torch.cat([context, tokens[path]]))[-1]
        assert torch.equal(tree[node], alone)
    accepted = paths[8]
    cache.keep(torch.tensor([40 + j for j in accepted]), start=40)
    follow = torch.randint(0, VOCAB, (1,), generator=gen)
    after = model(follow, torch.tensor([40 + len(accepted)]), None, cache)
    assert torch.equal(after[0], _one_by_one(model, torch.cat([context, tokens[accepted], follow]))[-1])


def test_fused_kernels_remain_a_choice(tmp_path) -> None:
    """``row_invariant=False`` keeps the one-call kernels; in float32 both give the same model."""
    base = make_tiny_model(tmp_path / "m", family="qwen2", vocab=VOCAB)
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(5))
    logits = {}
    for flag in (False, True):
        model = load_slice(base, None, with_embedding=True, with_head=True, dtype=torch.float32, row_invariant=flag)
        assert all(layer.self_attn.row_invariant is flag for layer in model.layers)
        logits[flag] = model.logits(model(ids, torch.arange(40), causal_attend(0, 40), model.new_cache()))
    torch.testing.assert_close(logits[False], logits[True], rtol=0, atol=1e-4)
