"""Which client connections are gone: ROUTER peers by file descriptor, from the socket monitor.

libzmq without its draft API has no ROUTER_NOTIFY, so the scheduler records each client's source
file descriptor (``SRCFD`` of a received frame) and watches the ROUTER's monitor: a disconnected
descriptor, or one accepted anew (reused, so its old peer is gone), names the clients that left.
"""

from __future__ import annotations


class ClientConnections:
    def __init__(self) -> None:
        self._clients: dict[int, set[str]] = {}  # file descriptor -> clients seen on it

    def seen(self, client: str, fd: int) -> None:
        self._clients.setdefault(fd, set()).add(client)

    def gone(self, fd: int) -> set[str]:
        """Clients of a descriptor that disconnected (or was reused); they are forgotten."""
        return self._clients.pop(fd, set())
