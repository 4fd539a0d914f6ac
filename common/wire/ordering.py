"""Order checks and epoch bookkeeping shared by every service.

Commands from the scheduler carry a per-service sequence number; segments carry a per-request
sequence number that every ring hop preserves. A gap, a repeat or a step backwards is reported as
an :class:`OrderError`, never applied. Prune events are applied strictly in epoch order; the
:class:`PruneLog` keeps the recent ones so a segment (or a draft report) tagged with an older epoch is
brought forward, nodes drafted after the scheduler's decision included (:class:`~common.speculation.tree.Renumbering`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from common.speculation.tree import RemappedRows, Renumbering
from common.wire.codec import Message
from common.wire.commands import Prune
from common.wire.errors import ProtocolError


class OrderError(ProtocolError):
    """A lost, duplicated or reordered message: the state it would touch is left unchanged."""


class SequenceCheck:
    """Expects 0, 1, 2, ... from one stream."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.expected = 0

    def check(self, seq: int) -> None:
        if seq != self.expected:
            kind = "duplicated or reordered" if seq < self.expected else "lost"
            raise OrderError(f"{self._what}: got #{seq}, expected #{self.expected} ({kind} message)")
        self.expected += 1


class PruneLog:
    """The epoch and round reached by one request, and the recent prune events that led there."""

    KEEP_EVENTS = 256  # far more than segments in flight; an older segment is an error

    def __init__(self) -> None:
        self.epoch = 0
        self.round = 0
        self._events: dict[int, Renumbering] = {}

    def record(self, event: Prune) -> None:
        if event.epoch != self.epoch + 1:
            raise OrderError(f"prune event for epoch {event.epoch} while at epoch {self.epoch}")
        self._events[event.epoch] = Renumbering(event.keep, event.known)
        self._events.pop(event.epoch - self.KEEP_EVENTS, None)
        self.epoch = event.epoch
        self.round = event.round

    def bring_forward(self, epoch: int, first: int, parents: Sequence[int]) -> RemappedRows:
        """Rows of a segment in numbering ``epoch`` as they stand now (``epoch <= self.epoch``).

        Every service brings each node through each event once, in index order (a service's own
        tree through the event it just recorded: ``bring_forward(epoch - 1, 0, parents)``).
        """
        if epoch > self.epoch:
            raise OrderError(f"segment of epoch {epoch} is ahead of this service (epoch {self.epoch})")
        rows = tuple(range(len(parents)))
        current = RemappedRows(rows, first, tuple(parents))
        for e in range(epoch + 1, self.epoch + 1):
            event = self._events.get(e)
            if event is None:
                raise OrderError(f"segment of epoch {epoch} is older than the prune log")
            try:
                step = event.remap(current.first, current.parents)
            except ValueError as exc:
                raise OrderError(f"segment of epoch {epoch} brought through event {e}: {exc}") from exc
            current = RemappedRows(tuple(current.rows[r] for r in step.rows), step.first, step.parents)
            if not current.rows:
                break
        return current


class EarlyMessages:
    """Messages that reached a service before the StartRequest of their request (links race).

    They are held per request id, in arrival order, and replayed when that request starts. Holding
    is bounded in total: past ``LIMIT`` the oldest held message (of any request) is dropped.
    """

    LIMIT = 1024

    def __init__(self) -> None:
        self._held: dict[str, deque[Message]] = {}
        self._arrivals: deque[str] = deque()  # request id of every held message, oldest first

    def hold(self, msg: Message) -> None:
        request_id = getattr(msg, "request_id", "")
        self._held.setdefault(request_id, deque()).append(msg)
        self._arrivals.append(request_id)
        while len(self._arrivals) > self.LIMIT:
            oldest = self._arrivals.popleft()
            queue = self._held.get(oldest)
            if queue:
                queue.popleft()
                if not queue:
                    del self._held[oldest]

    def release(self, request_id: str) -> list[Message]:
        """The messages held for ``request_id``, in arrival order; they are held no longer."""
        mine = list(self._held.pop(request_id, ()))
        if mine:
            self._arrivals = deque(r for r in self._arrivals if r != request_id)
        return mine

    def discard(self, request_id: str) -> None:
        self.release(request_id)

class CommandOrder:
    """The ``cmd_seq`` of one service's command stream: each is one more than the last.

    The first command a service sees sets the start (a service restarted mid-run joins the stream).
    ``check`` returns "" when the command is the next one, else why not:

    - ``lost``: a gap. ``gap`` holds the first and last missing numbers; the stream moves on past them
      and the command that revealed the gap is applied (its own request lost nothing, unless a missing
      command was its own, which its request's own order checks then catch). The service reports the
      gap (``Fault.lost``); the scheduler, which knows which request each number carried, fails exactly
      those requests.
    - ``repeated``: a repeat or a step backwards; the command is dropped and nothing changes.
    """

    def __init__(self) -> None:
        self.last: int | None = None
        self.gap: tuple[int, int] = (0, -1)  # the last gap found: first and last missing cmd_seq

    def check(self, seq: int) -> str:
        if self.last is None or seq == self.last + 1:
            self.last = seq
            return ""
        if seq > self.last + 1:
            self.gap = (self.last + 1, seq - 1)
            self.last = seq
            return "lost"
        return "repeated"
