"""The one KV-memory model agrees with the KVCache it models: its capacity, and the bytes that capacity holds."""

from __future__ import annotations

import pytest
import torch

from common.models.kv_memory import KV_INITIAL_CAPACITY, kv_bytes_per_token, kv_cache_bytes, kv_capacity
from common.models.modeling import KVCache


@pytest.mark.parametrize(("rows", "capacity"), [(0, 256), (1, 256), (256, 256), (257, 512), (2049, 4096)])
def test_capacity_doubles_from_the_initial_one(rows, capacity):
    assert kv_capacity(rows) == capacity


@pytest.mark.parametrize("rows", [0, 300, 600])
def test_the_model_matches_what_a_kv_cache_allocates(rows):
    layers, kv_heads, head_dim = 2, 3, 4
    cache = KVCache(layers, kv_heads, head_dim, dtype=torch.bfloat16)
    for layer in range(layers):
        k = torch.zeros(kv_heads, rows, head_dim, dtype=torch.bfloat16)
        cache.extend(layer, k, k)
    cache.advance(rows)
    assert cache.capacity == kv_capacity(rows)
    assert cache.nbytes == kv_cache_bytes(rows, kv_bytes_per_token(kv_heads * head_dim, 2, layers))


def test_negative_rows_are_refused():
    assert KV_INITIAL_CAPACITY == 256
    with pytest.raises(ValueError, match="non-negative"):
        kv_capacity(-1)
