"""Scheduler commands to the ring services: start, prune, expand, end, shutdown."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from common.speculation.modes import DraftSettings, Mode
from common.wire.errors import member


@dataclass(frozen=True)
class StartRequest:
    """Begin a request: every service resets its per-request state."""

    KIND: ClassVar[str] = "start"
    request_id: str
    cmd_seq: int
    prompt: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    seed: int = 0
    draft: DraftSettings = field(default_factory=DraftSettings)
    prefill_chunk: int = 64
    mode: Mode = Mode.FLOWSPEC
    link_mbps: float = 0.0  # emulated bandwidth of every hop for this request (0: unshaped)
    link_latency_ms: float = 0.0  # emulated one-way latency of every hop
    trace: bool = False  # record this request's timeline (common.observability.trace)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", member(Mode, self.mode, "mode"))  # a str off the wire


@dataclass(frozen=True)
class Prune:
    """Prune event number ``epoch``: applies to tree numbering ``epoch - 1``.

    ``accepted``: the verified path (root first), now committed context. ``keep``: the next token's
    node and its descendants, ascending; node ``keep[i]`` becomes node ``i``. Empty ``keep`` ends the
    round (the next token is not in the tree): the next round starts from ``next_token``.
    ``new_tokens``: output tokens this event adds (accepted after the root, then ``next_token``).
    ``known``: the size of the tree the scheduler decided over. A node at or past it was drafted but
    not yet reported: it survives iff its parent survives, numbered after the kept nodes in index
    order (:class:`common.speculation.tree.Renumbering`); -1: every node was known.
    """

    KIND: ClassVar[str] = "prune"
    request_id: str
    cmd_seq: int
    epoch: int
    round: int
    accepted: tuple[int, ...]
    keep: tuple[int, ...]
    new_tokens: tuple[int, ...]
    next_token: int
    known: int = -1

    @property
    def ends_round(self) -> bool:
        return not self.keep


@dataclass(frozen=True)
class Expand:
    """A credit: one segment left the ring, the drafter may send one more (a new round's fill after a round end).

    The drafter drafts ahead without credits; credits only pace what it sends.
    """

    KIND: ClassVar[str] = "expand"
    request_id: str
    cmd_seq: int
    epoch: int


@dataclass(frozen=True)
class EndRequest:
    KIND: ClassVar[str] = "end"
    request_id: str
    cmd_seq: int
    reason: str


@dataclass(frozen=True)
class Shutdown:
    KIND: ClassVar[str] = "shutdown"
    cmd_seq: int
