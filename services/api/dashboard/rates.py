"""Live figures from successive scrapes of the services' Prometheus counters. Pure.

A :class:`History` keeps each service's samples of the last ``WINDOW_S`` seconds (and the one before, so a
window always has two ends); a counter that went down, or a new pid, means the service restarted: its
history starts again. Rates are over the window: the busy ratio is d(busy seconds)/dt (the pipeline's
bubbles made visible), acceptance per step is vLLM's acceptance length 1 + d(accepted)/d(drafts), time to
first token the mean of the histogram's new observations.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

WINDOW_S = 10.0
BUSY = "flowring_busy_seconds_total"
DRAFTS = "flowring_spec_decode_num_drafts_total"
ACCEPTED = "flowring_spec_decode_num_accepted_tokens_total"
TTFT_SUM = "flowring_time_to_first_token_seconds_sum"
TTFT_COUNT = "flowring_time_to_first_token_seconds_count"
WANTED = (BUSY, DRAFTS, ACCEPTED, TTFT_SUM, TTFT_COUNT)


@dataclass(frozen=True)
class Sample:
    at_s: float
    pid: int
    values: Mapping[str, float]  # counter totals, summed over labels


@dataclass(frozen=True)
class Figures:
    busy_ratio: float | None  # None: not two samples yet, or no metrics
    acceptance: float | None  # over the window; None: no draft verified in it
    acceptance_total: float | None  # since the service started
    ttft_ms: float | None  # mean over the window's first tokens
    ttft_total_ms: float | None


class History:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[Sample]] = {}
        self._pids: dict[str, int] = {}
        self.restarts: dict[str, int] = {}  # pid changes seen per service

    def add(self, service: str, sample: Sample) -> None:
        samples = self._samples.setdefault(service, deque())
        known = self._pids.get(service, 0)
        if sample.pid and known and sample.pid != known:
            self.restarts[service] = self.restarts.get(service, 0) + 1
            samples.clear()
        if sample.pid:
            self._pids[service] = sample.pid
        if samples and any(sample.values.get(k, 0.0) < samples[-1].values.get(k, 0.0) for k in WANTED):
            samples.clear()  # counters went back: a restart between two samples
        samples.append(sample)
        while len(samples) > 2 and samples[1].at_s <= sample.at_s - self.window_s:
            samples.popleft()

    def figures(self, service: str) -> Figures:
        samples = self._samples.get(service)
        if not samples:
            return Figures(None, None, None, None, None)
        first, last = samples[0], samples[-1]
        dt = last.at_s - first.at_s

        def delta(key: str) -> float:
            return last.values.get(key, 0.0) - first.values.get(key, 0.0)

        busy = min(1.0, max(0.0, delta(BUSY) / dt)) if dt > 0 and BUSY in last.values else None
        return Figures(
            busy_ratio=busy,
            acceptance=_ratio(delta(ACCEPTED), delta(DRAFTS), plus=1.0),
            acceptance_total=_ratio(last.values.get(ACCEPTED, 0.0), last.values.get(DRAFTS, 0.0), plus=1.0),
            ttft_ms=_ratio(delta(TTFT_SUM) * 1e3, delta(TTFT_COUNT)),
            ttft_total_ms=_ratio(last.values.get(TTFT_SUM, 0.0) * 1e3, last.values.get(TTFT_COUNT, 0.0)),
        )


def _ratio(num: float, den: float, plus: float = 0.0) -> float | None:
    return plus + num / den if den > 0 else None


def totals(families: Mapping[str, float]) -> dict[str, float]:
    """The wanted series of one scrape (``sample name -> value`` already summed over labels)."""
    return {k: families[k] for k in WANTED if k in families}
