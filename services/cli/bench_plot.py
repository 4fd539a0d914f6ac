"""PNG of a benchmark summary: throughput per mode, and every service's busy ratio per mode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.observability.bench_report import ModeSummary, service_order
from common.observability.trace import SPAN_KINDS, is_span

SPAN_COLOURS = {"recv": "#9ecae1", "forward": "#3182bd", "prune": "#e6550d", "send": "#fdae6b", "draft": "#31a354",
                "verify": "#756bb1", "schedule": "#636363"}
TIMELINE_WINDOW_S = 3.0  # the first seconds of a request: enough to see the pipeline's steady state


class PlotError(RuntimeError):
    """The plot could not be drawn (matplotlib missing) or written."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotError("--plot needs matplotlib: pip install matplotlib") from exc
    return plt


def write_timeline(requests: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """One panel per traced request: a lane per service, a bar per span, gaps are waiting (bubbles)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(requests), 1, figsize=(14, 1.0 + 0.45 * 7 * len(requests)), squeeze=False)
    for ax, request in zip(axes[:, 0], requests, strict=True):
        spans = request["spans"]
        services = sorted(spans, key=_lane_order)
        origin = min((flat[1] for flat in spans.values() if flat), default=0)
        for lane, name in enumerate(services):
            flat = spans[name]
            bars: dict[str, list[tuple[float, float]]] = {}
            for code, ts, dur in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
                start = (ts - origin) / 1e6
                if is_span(code) and start <= TIMELINE_WINDOW_S:
                    bars.setdefault(SPAN_KINDS[code], []).append((start, max(dur / 1e6, 1e-4)))
            for kind, segments in bars.items():
                ax.broken_barh(segments, (lane - 0.4, 0.8), facecolors=SPAN_COLOURS[kind], label=kind)
        ax.set_yticks(range(len(services)), services)
        ax.invert_yaxis()
        ax.set_xlim(0, TIMELINE_WINDOW_S)
        ax.set_xlabel("seconds since the request's first span")
        ax.set_title(str(request["label"]), fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), loc="upper right", fontsize=7, ncol=len(unique))
    _save(plt, fig, f"timeline (white: waiting); {title}", path)


def _lane_order(name: str) -> tuple[int, int, str]:
    if name == "drafter":
        return (-1, 0, name)
    return service_order(name) if name != "scheduler" else (3, 0, name)


def write_plot(summaries: Sequence[ModeSummary], path: Path, title: str) -> None:
    """Two panels: decode and end-to-end tokens/s per mode; busy ratio per service per mode."""
    plt = _pyplot()
    modes = [s.mode for s in summaries]
    services = sorted({name for s in summaries for name in s.busy_ratio}, key=service_order) + ["drafter"]
    fig, (rate_ax, busy_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.38
    xs = range(len(modes))
    rate_ax.bar([x - width / 2 for x in xs], [s.decode_tokens_per_s for s in summaries], width, label="decode")
    rate_ax.bar([x + width / 2 for x in xs], [s.tokens_per_s for s in summaries], width, label="end to end")
    rate_ax.set_xticks(list(xs), modes)
    rate_ax.set_ylabel("tokens/s (pooled over prompts)")
    rate_ax.set_title("throughput per mode")
    rate_ax.legend()
    bar = 0.8 / max(len(modes), 1)
    for i, s in enumerate(summaries):
        ratios = [s.drafter_busy_ratio if name == "drafter" else s.busy_ratio.get(name, 0.0) for name in services]
        busy_ax.bar([j - 0.4 + bar * (i + 0.5) for j in range(len(services))], ratios, bar, label=s.mode)
    busy_ax.set_xticks(range(len(services)), services)
    busy_ax.set_ylabel("busy time / wall time")
    busy_ax.set_ylim(0, 1.05)
    busy_ax.set_title("busy ratio per service")
    busy_ax.legend()
    _save(plt, fig, title, path)


def _save(plt: Any, fig: Any, title: str, path: Path) -> None:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise PlotError(f"cannot write plot {path}: {exc}") from exc
    finally:
        plt.close(fig)
