"""A request's life in the scheduler (``Job``) and the text codec the shell hands the scheduler."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common.models.text_stream import TextStream
from common.speculation.tree import DraftTree
from common.wire.client import GenerateReply, GenerateRequest
from common.wire.ordering import PruneLog
from common.wire.reports import Verdict


@dataclass(frozen=True)
class TextCodec:
    """Prompt text -> token ids and token ids -> text, supplied by the shell (the tokenizer)."""

    encode: Callable[[str, bool], list[int]]
    decode: Callable[[Sequence[int]], str]


@dataclass
class Job:
    """One request as the scheduler tracks it, from admission to its reply (replays included)."""

    client: str
    request: GenerateRequest
    request_id: str  # in the ring: the client's id, then "r3~1" ... once replayed (services/scheduler/replay.py)
    prompt: tuple[int, ...]
    kv_bytes: int  # admission's estimate of its KV need on the largest stage
    submitted: float = field(default_factory=time.perf_counter)  # TTFT, latency and the deadline count from here
    started: float = 0.0  # when it entered the ring
    tree: DraftTree = field(default_factory=lambda: DraftTree((), (), ()))
    output: list[int] = field(default_factory=list)
    log: PruneLog = field(default_factory=PruneLog)  # the prunes issued: epoch, round, late reports forward
    verdicts: deque[Verdict] = field(default_factory=deque)  # the first waits for the report of its nodes
    prefilled_at: float = 0.0
    steps: int = 0
    noops: int = 0
    accepted: int = 0
    step_tokens: int = 0  # output tokens produced by tree verifications
    draft_ms: float = 0.0
    finished_at: float = 0.0
    reply: GenerateReply | None = None  # set when finished; sent once every service reported stats
    service_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    spans: dict[str, tuple[int, ...]] = field(default_factory=dict)  # service -> timeline, when traced
    streamed: int = 0  # output tokens already sent in chunks
    text: TextStream | None = None  # streamed requests with a tokenizer
    replays: int = 0  # times it was resumed from its committed context after a ring service died
    expect: int | None = None  # after a scheduler restart: the journal's last token, which the ring must re-derive

    @property
    def epoch(self) -> int:
        return self.log.epoch

    @property
    def round(self) -> int:
        return self.log.round
