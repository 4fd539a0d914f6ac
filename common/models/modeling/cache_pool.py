"""A small pool of KV caches, so a service running request after request never reallocates them."""

from __future__ import annotations

from collections.abc import Callable

from common.models.modeling.kv_cache import KVCache


class CachePool:
    """Hands out empty caches; returned ones are reset and kept, at most ``keep`` of them."""

    def __init__(self, new_cache: Callable[[], KVCache], keep: int = 4) -> None:
        self._new_cache = new_cache
        self._keep = keep
        self._free: list[KVCache] = []

    @property
    def free(self) -> int:
        """Caches waiting to be reused."""
        return len(self._free)

    def take(self) -> KVCache:
        return self._free.pop() if self._free else self._new_cache()

    def give(self, cache: KVCache) -> None:
        cache.reset()
        if len(self._free) < self._keep:
            self._free.append(cache)
