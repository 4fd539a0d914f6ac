"""Per-request state of a ring service, found by request id: the one dispatcher every core uses.

Segments and commands of several requests interleave. A message whose request has not started yet
(its StartRequest is still on another link) is held and replayed at the start; a message of a
request that ended (or failed) here is dropped. Both memories are bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from common.wire.codec import Message
from common.wire.ordering import EarlyMessages

State = TypeVar("State")


class RequestTable(Generic[State]):
    """``request_id -> state`` for the requests a service is running, plus held and ended ids."""

    ENDED_LIMIT = 4096  # ended ids remembered; older stragglers are held, then evicted, harmlessly

    def __init__(self) -> None:
        self.active: dict[str, State] = {}
        self._early = EarlyMessages()
        self._ended: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.active

    def __len__(self) -> int:
        return len(self.active)

    def start(self, request_id: str, state: State) -> list[Message]:
        """Register a started request; returns its held early messages, in arrival order."""
        self.active[request_id] = state
        return self._early.release(request_id)

    def route(self, msg: Message) -> State | None:
        """The state ``msg`` belongs to, or None when it was held (not started) or dropped (ended)."""
        request_id = getattr(msg, "request_id", "")
        state = self.active.get(request_id)
        if state is None and request_id not in self._ended:
            self._early.hold(msg)
        return state

    def end(self, request_id: str) -> State | None:
        """Forget a request (ended or failed); later messages for it are dropped."""
        self._ended[request_id] = None
        self._ended.move_to_end(request_id)
        while len(self._ended) > self.ENDED_LIMIT:
            self._ended.popitem(last=False)
        self._early.discard(request_id)
        return self.active.pop(request_id, None)
