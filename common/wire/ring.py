"""Ring data: segments of rows on the data path and the base features a draft head reads."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

import torch

from common.wire.errors import ProtocolError, member


class Phase(StrEnum):
    """What a segment's rows are: prompt rows (``prefill``) or draft-tree nodes (``tree``)."""

    PREFILL = "prefill"
    TREE = "tree"


@dataclass(frozen=True)
class Segment:
    """Rows travelling the ring drafter -> stage 1 -> ... -> stage N -> verifier.

    ``phase`` "prefill": prompt rows at absolute positions, appended to committed context (causal).
    ``phase`` "tree": draft-tree nodes ``first .. first+len-1`` in the numbering of ``epoch``;
    ``parents[i]`` is a tree index (-1: the node is the root, attached to committed context).
    Zero rows is an EMPTY bubble: it keeps one message per slot so sequence numbers stay dense.
    ``hidden`` is absent on the drafter's output (stage 1 embeds ``tokens``).
    """

    KIND: ClassVar[str] = "segment"
    request_id: str
    round: int
    epoch: int
    seq: int
    phase: Phase
    first: int
    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    positions: tuple[int, ...]
    last_prefill: bool = False
    closes_tree: bool = False  # last segment of a round's fill tree (Chunk-PP verifies the tree whole)
    hidden: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.tokens)
        object.__setattr__(self, "phase", member(Phase, self.phase, "segment phase"))  # a str off the wire
        if len(self.positions) != n or (self.phase is Phase.TREE and len(self.parents) != n):
            raise ProtocolError("segment tokens, parents and positions disagree in length")
        if self.hidden is not None and (self.hidden.dim() != 2 or self.hidden.shape[0] != n):
            raise ProtocolError(f"segment hidden shape {tuple(self.hidden.shape)} does not match {n} rows")

    @property
    def rows(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Features:
    """Final-normed base hidden states of committed tokens, verifier -> drafter (for a draft head).

    Rows are the tokens at context positions ``position .. position + n - 1``: every prompt chunk's
    rows after prefill, and a verdict's accepted path (root first).
    """

    KIND: ClassVar[str] = "features"
    request_id: str
    position: int
    hidden: torch.Tensor

    def __post_init__(self) -> None:
        if self.hidden.dim() != 2:
            raise ProtocolError(f"features must be [rows, hidden], got {tuple(self.hidden.shape)}")
