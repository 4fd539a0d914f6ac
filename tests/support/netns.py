"""The tests' name for :mod:`services.testbed.netns` (it lives there so ``infra/`` can use it too)."""

from services.testbed.netns import SSHD, NetnsBoard, NetnsLan, unavailable

__all__ = ["SSHD", "NetnsBoard", "NetnsLan", "unavailable"]
