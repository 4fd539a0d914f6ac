import torch

from common.models.modeling import KVCache
from common.models.modeling.cache_pool import CachePool


def _cache() -> KVCache:
    return KVCache(1, 1, 2, dtype=torch.float32, initial_capacity=4)


def test_returned_caches_are_reused_empty() -> None:
    pool = CachePool(_cache)
    cache = pool.take()
    cache.extend(0, torch.ones(1, 3, 2), torch.ones(1, 3, 2))
    cache.advance(3)
    pool.give(cache)
    again = pool.take()
    assert again is cache and again.length == 0


def test_pool_keeps_at_most_keep_caches() -> None:
    pool = CachePool(_cache, keep=2)
    caches = [pool.take() for _ in range(3)]
    assert len({id(c) for c in caches}) == 3, "an empty pool allocates"
    for c in caches:
        pool.give(c)
    assert pool.free == 2
