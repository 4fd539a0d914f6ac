"""PNG of a benchmark summary: throughput per mode, and every service's busy ratio per mode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.bench_report import ModeSummary, service_order


class PlotError(RuntimeError):
    """The plot could not be drawn (matplotlib missing) or written."""


def write_plot(summaries: Sequence[ModeSummary], path: Path, title: str) -> None:
    """Two panels: decode and end-to-end tokens/s per mode; busy ratio per service per mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotError("--plot needs matplotlib: pip install matplotlib") from exc
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
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise PlotError(f"cannot write plot {path}: {exc}") from exc
    finally:
        plt.close(fig)
