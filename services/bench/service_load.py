"""What each ring service did during a bench phase, read from its Prometheus endpoint before and after.

Busy ratio: busy seconds / the phase's wall time. Rows per forward and requests per forward: the
increase of the ``flowring_forward_rows`` and ``flowring_forward_requests`` histograms' sums over the
increase of their counts (the drafter's shared draft levels, the stages' and the verifier's shared
forwards). A service whose endpoint does not answer is left out, never guessed.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Counters:
    """One scrape of one service."""

    busy_s: float = 0.0
    forwards: float = 0.0
    rows: float = 0.0
    requests: float = 0.0


@dataclass(frozen=True)
class ServiceLoad:
    busy_ratio: float
    forwards: int
    rows_per_forward: float
    requests_per_forward: float

    def to_json(self) -> dict[str, float]:
        return {"busy_ratio": self.busy_ratio, "forwards": self.forwards, "rows_per_forward": self.rows_per_forward,
                "requests_per_forward": self.requests_per_forward}


def parse(text: str) -> Counters:
    """The counters a phase needs, from a Prometheus text page."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return Counters(values.get("flowring_busy_seconds_total", 0.0), values.get("flowring_forward_rows_count", 0.0),
                    values.get("flowring_forward_rows_sum", 0.0), values.get("flowring_forward_requests_sum", 0.0))


def scrape(urls: Mapping[str, str], timeout_s: float = 2.0) -> dict[str, Counters]:
    """Every service's counters now, by name; those without an endpoint or an answer are left out."""
    out: dict[str, Counters] = {}
    for name, url in urls.items():
        if not url:
            continue
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (our own http endpoint)
                out[name] = parse(response.read().decode("utf-8"))
        except (OSError, ValueError, urllib.error.URLError):
            continue
    return out


def between(before: Mapping[str, Counters], after: Mapping[str, Counters], wall_s: float) -> dict[str, ServiceLoad]:
    """Each service's load from two scrapes ``wall_s`` apart (services in both only)."""
    out: dict[str, ServiceLoad] = {}
    for name in [n for n in after if n in before]:
        a, b = before[name], after[name]
        forwards = b.forwards - a.forwards
        out[name] = ServiceLoad(
            busy_ratio=(b.busy_s - a.busy_s) / wall_s if wall_s > 0 else 0.0,
            forwards=int(forwards),
            rows_per_forward=(b.rows - a.rows) / forwards if forwards else 0.0,
            requests_per_forward=(b.requests - a.requests) / forwards if forwards else 0.0,
        )
    return out
