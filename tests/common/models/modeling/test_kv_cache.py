"""KVCache: extend/advance protocol, growth, compaction and truncation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.models.modeling import KVCache

LAYERS, HEADS, DIM = 3, 2, 4


def _rows(start: int, count: int, layer: int, *, sign: float = 1.0) -> torch.Tensor:
    """Distinct recognisable rows ``[HEADS, count, DIM]``: value encodes layer, head, row, column."""
    head = torch.arange(HEADS)[:, None, None] * 1000
    row = (torch.arange(count) + start)[None, :, None] * 10
    col = torch.arange(DIM)[None, None, :]
    return sign * (layer * 100000 + head + row + col).float()


def _append(cache: KVCache, count: int) -> None:
    start = cache.length
    for layer in range(cache.num_layers):
        cache.extend(layer, _rows(start, count, layer), _rows(start, count, layer, sign=-1.0))
    cache.advance(count)


def _check_rows(cache: KVCache, expected_rows: list[int]) -> None:
    """Every layer holds, in order, the original rows ``expected_rows``."""
    assert cache.length == len(expected_rows)
    for layer in range(cache.num_layers):
        keys = torch.cat([_rows(r, 1, layer) for r in expected_rows], dim=1) if expected_rows else None
        dummy = torch.zeros(HEADS, 0, DIM)
        got_k, got_v = cache.extend(layer, dummy, dummy)  # views of the committed rows
        if keys is None:
            assert got_k.shape == (HEADS, 0, DIM)
        else:
            torch.testing.assert_close(got_k, keys, rtol=0, atol=0)
            torch.testing.assert_close(got_v, -keys, rtol=0, atol=0)
    cache.rollback()


def test_extend_returns_all_rows_and_advance_commits() -> None:
    cache = KVCache(LAYERS, HEADS, DIM, dtype=torch.float32, initial_capacity=8)
    _append(cache, 3)
    k, v = cache.extend(0, _rows(3, 2, 0), _rows(3, 2, 0, sign=-1.0))
    assert k.shape == (HEADS, 5, DIM) and v.shape == (HEADS, 5, DIM)
    assert cache.length == 3  # not committed until advance
    cache.rollback()
    _check_rows(cache, [0, 1, 2])


def test_growth_beyond_initial_capacity_keeps_contents() -> None:
    cache = KVCache(LAYERS, HEADS, DIM, dtype=torch.float32, initial_capacity=4)
    before = cache.nbytes
    _append(cache, 3)
    _append(cache, 6)  # 9 rows: 4 -> 16
    assert cache.capacity == 16
    _append(cache, 1)
    _append(cache, 7)  # 17 rows: 16 -> 32
    assert cache.capacity == 32
    assert cache.nbytes == before * 8
    _check_rows(cache, list(range(17)))


def test_growth_during_a_pass_keeps_rows_of_layers_already_extended() -> None:
    cache = KVCache(2, HEADS, DIM, dtype=torch.float32, initial_capacity=2)
    _append(cache, 2)
    cache.extend(0, _rows(2, 1, 0), _rows(2, 1, 0, sign=-1.0))  # grows everything
    cache.extend(1, _rows(2, 1, 1), _rows(2, 1, 1, sign=-1.0))
    cache.advance(1)
    _check_rows(cache, [0, 1, 2])


def test_keep_compacts_every_layer() -> None:
    cache = KVCache(LAYERS, HEADS, DIM, dtype=torch.float32, initial_capacity=4)
    _append(cache, 10)
    cache.keep(torch.tensor([0, 1, 4, 7, 9]))
    _check_rows(cache, [0, 1, 4, 7, 9])
    _append(cache, 2)  # new rows land right after the kept ones
    assert cache.length == 7


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(min_value=0, max_value=40),
    data=st.data(),
)
def test_keep_matches_reference_gather(length: int, data: st.DataObject) -> None:
    cache = KVCache(2, HEADS, DIM, dtype=torch.float32, initial_capacity=8)
    if length:
        _append(cache, length)
    rows = sorted(
        data.draw(st.sets(st.integers(min_value=0, max_value=max(length - 1, 0)))) if length else []
    )
    cache.keep(torch.tensor(rows, dtype=torch.long))
    _check_rows(cache, rows)


def test_keep_edge_cases() -> None:
    cache = KVCache(LAYERS, HEADS, DIM, dtype=torch.float32)
    _append(cache, 5)
    cache.keep(torch.arange(5))  # identity
    _check_rows(cache, [0, 1, 2, 3, 4])
    for bad in ([0, 5], [-1, 2], [2, 1], [1, 1]):
        with pytest.raises(ValueError):
            cache.keep(torch.tensor(bad))
    _check_rows(cache, [0, 1, 2, 3, 4])  # failed keeps change nothing
    cache.keep(torch.tensor([], dtype=torch.long))
    assert cache.length == 0


def test_truncate_and_reset() -> None:
    cache = KVCache(LAYERS, HEADS, DIM, dtype=torch.float32)
    _append(cache, 6)
    cache.truncate(6)
    assert cache.length == 6
    cache.truncate(2)
    _check_rows(cache, [0, 1])
    _append(cache, 3)  # overwrites the dropped rows
    _check_rows(cache, [0, 1, 2, 3, 4])
    with pytest.raises(ValueError):
        cache.truncate(6)
    with pytest.raises(ValueError):
        cache.truncate(-1)
    cache.truncate(0)
    assert cache.length == 0
    _append(cache, 2)
    cache.reset()
    assert cache.length == 0


def test_protocol_misuse_is_rejected() -> None:
    cache = KVCache(2, HEADS, DIM, dtype=torch.float32)
    k = _rows(0, 2, 0)
    cache.extend(0, k, k)
    with pytest.raises(RuntimeError):
        cache.extend(0, k, k)  # same layer twice in one pass
    with pytest.raises(RuntimeError):
        cache.advance(2)  # layer 1 not extended
    with pytest.raises(RuntimeError):
        cache.keep(torch.tensor([], dtype=torch.long))
    with pytest.raises(RuntimeError):
        cache.truncate(0)
    cache.rollback()
    with pytest.raises(IndexError):
        cache.extend(2, k, k)
    with pytest.raises(ValueError):
        cache.extend(0, torch.zeros(HEADS + 1, 2, DIM), torch.zeros(HEADS + 1, 2, DIM))
    with pytest.raises(ValueError):
        KVCache(-1, HEADS, DIM, dtype=torch.float32)
    assert cache.length == 0


def test_zero_layer_cache_only_tracks_length() -> None:
    cache = KVCache(0, HEADS, DIM, dtype=torch.float32)
    cache.advance(4)
    cache.keep(torch.tensor([1, 3]))
    assert cache.length == 2 and cache.nbytes == 0


def test_buffers_follow_dtype() -> None:
    cache = KVCache(1, HEADS, DIM, dtype=torch.bfloat16, initial_capacity=4)
    k, _ = cache.extend(0, torch.ones(HEADS, 1, DIM), torch.ones(HEADS, 1, DIM))
    assert k.dtype == torch.bfloat16
    assert cache.nbytes == 2 * HEADS * 4 * DIM * 2


def test_keep_with_a_start_leaves_the_prefix_and_compacts_the_rest():
    cache = KVCache(2, 1, 2, dtype=torch.float32, initial_capacity=8)
    rows = torch.arange(6, dtype=torch.float32)[None, :, None].expand(1, 6, 2).clone()  # row i holds i
    for layer in range(2):
        cache.extend(layer, rows, rows + 100)
    cache.advance(6)
    cache.keep(torch.tensor([3, 5]), start=2)
    keys, values = cache.extend(0, rows[:, :1], rows[:, :1])
    cache.rollback()
    assert cache.length == 4
    assert keys[0, :4, 0].tolist() == [0.0, 1.0, 3.0, 5.0]
    assert values[0, :4, 0].tolist() == [100.0, 101.0, 103.0, 105.0]
    with pytest.raises(ValueError):
        cache.keep(torch.tensor([1]), start=2)


def test_reserve_makes_room_once_and_keeps_contents() -> None:
    cache = KVCache(LAYERS, HEADS, DIM, dtype=torch.float32, initial_capacity=4)
    _append(cache, 3)
    cache.reserve(2)  # already room: nothing reallocated
    assert cache.capacity == 4
    cache.reserve(9)
    assert cache.capacity == 16
    buffers = [id(t) for t in cache._keys]
    _append(cache, 13)  # 16 rows: within the reservation, the same buffers
    assert cache.capacity == 16 and [id(t) for t in cache._keys] == buffers
    _check_rows(cache, list(range(16)))
    cache.extend(0, _rows(16, 1, 0), _rows(16, 1, 0, sign=-1.0))
    with pytest.raises(RuntimeError, match="reserve"):
        cache.reserve(64)
