"""The tests' name for :mod:`services.testbed.local_ring` (it lives there so ``infra/`` can use it too)."""

from services.testbed.local_ring import LocalRing

__all__ = ["LocalRing"]
