"""The one model of KV-cache memory, used by the planner (common/cluster) and admission (services/scheduler).

A cache row holds one token's keys and values in every layer of a slice, at ``kv_bytes_per_token``. ``KVCache``
allocates rows in a capacity that starts at ``KV_INITIAL_CAPACITY`` and doubles: the planner budgets that
capacity (what a stage's cache holds once grown). Admission charges each request the rows it will write, at
the same per-token cost: the stages' caches are pooled and reused across requests, so a request's share is
its rows, not a fresh capacity.
"""

from __future__ import annotations

KV_INITIAL_CAPACITY = 256  # KVCache's default first capacity (common/models/modeling/kv_cache.py)


def kv_bytes_per_token(kv_dim: int, dtype_bytes: int, layers: int = 1) -> int:
    """Keys and values of one token in ``layers`` layers; ``kv_dim`` is kv_heads * head_dim."""
    return 2 * layers * kv_dim * dtype_bytes


def kv_capacity(rows: int) -> int:
    """Rows a KVCache has allocated once it holds ``rows`` (capacity doubles from KV_INITIAL_CAPACITY)."""
    if rows < 0:
        raise ValueError(f"KV rows must be non-negative, got {rows}")
    capacity = KV_INITIAL_CAPACITY
    while capacity < rows:
        capacity *= 2
    return capacity


def kv_cache_bytes(rows: int, bytes_per_token: int) -> int:
    """Bytes a KVCache holds once it holds ``rows`` rows of ``bytes_per_token`` each."""
    return kv_capacity(rows) * bytes_per_token
