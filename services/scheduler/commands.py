"""Each ring service's command stream as the scheduler numbers it, and which request each number carried (pure).

A service that finds a gap in its ``cmd_seq`` reports the missing numbers (``Fault.lost``); this book
turns them back into the requests whose commands were lost, so exactly those fail. It remembers the
last ``KEEP`` numbers per service: far more than commands in flight on any link.
"""

from __future__ import annotations

from collections.abc import Iterable


class CommandLog:
    KEEP = 4096

    def __init__(self, services: Iterable[str], first: int = 0) -> None:
        self._next = dict.fromkeys(services, first)  # a restarted scheduler starts past its predecessor
        self._owner: dict[str, dict[int, str]] = {name: {} for name in self._next}

    def next(self, service: str, request_id: str) -> int:
        """The next ``cmd_seq`` for ``service``, carrying a command of ``request_id``."""
        seq = self._next[service]
        self._next[service] = seq + 1
        owners = self._owner[service]
        owners[seq] = request_id
        owners.pop(seq - self.KEEP, None)
        return seq

    def owners(self, service: str, first: int, last: int) -> list[str]:
        """The request ids whose commands ``first`` .. ``last`` to ``service`` carried, in order, once each."""
        owners = self._owner.get(service, {})
        last = min(last, self._next.get(service, 0) - 1)
        found = (owners.get(seq) for seq in range(max(first, last - self.KEEP + 1), last + 1))
        return list(dict.fromkeys(r for r in found if r is not None))
