"""What the API itself sees for the dashboard: tokens streamed per second, each answer's speed and the spans
of traced requests. In memory, bounded; every method takes the time from the caller (or the wall clock).

Spans come back with a traced request's final reply (``GenerateReply.stats["trace"]``, as ``flowring bench
--trace`` gets them), so the timeline shows a request once it has ended.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TOKEN_WINDOW_S = 5.0  # tokens/s is averaged over this long
KEEP_TRACES = 8  # traced requests kept for the timeline
KEEP_ANSWERS = 20


@dataclass(frozen=True)
class Answer:
    """One finished request as the scheduler reported it."""

    ended_s: float  # wall clock
    ok: bool
    new_tokens: int
    ttft_ms: float  # the scheduler's prefill_ms: submission to the first token
    wall_ms: float
    decode_tokens_per_s: float
    mode: str


class Recorder:
    def __init__(self) -> None:
        self._tokens: deque[tuple[float, int]] = deque()  # (time, tokens) per chunk
        self._traces: deque[dict[str, Any]] = deque(maxlen=KEEP_TRACES)
        self._answers: deque[Answer] = deque(maxlen=KEEP_ANSWERS)

    def tokens(self, count: int, now: float | None = None) -> None:
        """``count`` tokens streamed to an HTTP client."""
        now = time.time() if now is None else now
        self._tokens.append((now, count))
        self._forget(now)

    def finished(self, ok: bool, stats: Mapping[str, Any], now: float | None = None) -> None:
        """A request's final reply: its figures, and its spans when it was traced."""
        now = time.time() if now is None else now
        self._answers.append(Answer(
            ended_s=now, ok=ok, new_tokens=int(stats.get("new_tokens", 0)), ttft_ms=float(stats.get("prefill_ms", 0.0)),
            wall_ms=float(stats.get("wall_ms", 0.0)), decode_tokens_per_s=float(stats.get("decode_tokens_per_s", 0.0)),
            mode=str(stats.get("mode", "")),
        ))
        spans = stats.get("trace")
        if isinstance(spans, Mapping) and spans:
            label = f"{stats.get('mode', '')} {str(stats.get('request_id', ''))[:8]}".strip()
            self._traces.append({"label": label, "ended_s": now,
                                 "spans": {str(k): list(v) for k, v in spans.items() if isinstance(v, list | tuple)}})

    def tokens_per_s(self, now: float | None = None) -> float:
        """Tokens streamed over the last ``TOKEN_WINDOW_S``, per second."""
        now = time.time() if now is None else now
        self._forget(now)
        return sum(n for t, n in self._tokens if t <= now) / TOKEN_WINDOW_S

    def answers(self) -> list[Answer]:
        """The last answers, oldest first."""
        return list(self._answers)

    def traces(self, since_s: float = 0.0) -> list[dict[str, Any]]:
        """Traced requests that ended after ``since_s``, oldest first."""
        return [t for t in self._traces if t["ended_s"] > since_s]

    def _forget(self, now: float) -> None:
        while self._tokens and self._tokens[0][0] < now - TOKEN_WINDOW_S:
            self._tokens.popleft()
