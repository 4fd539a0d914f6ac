"""What a finished request's reply reports: its timings from submission and from ring entry, and its counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.observability import trace
from services.scheduler.attempts import request_id_of

if TYPE_CHECKING:
    from services.scheduler.job import Job


def request_stats(job: Job) -> dict[str, Any]:
    """The stats of a finished request's reply (times in ms from ``time.perf_counter``)."""
    spans = trace.finish(job.request_id)
    prefilled = job.prefilled_at or job.finished_at
    decode_s = max(job.finished_at - prefilled, 1e-9)
    wall_s = job.finished_at - job.started
    new = len(job.output)
    return {
        "request_id": request_id_of(job.request_id),
        "replays": job.replays,
        "mode": job.request.mode,
        "prompt_tokens": len(job.prompt),
        "new_tokens": new,
        "steps": job.steps,
        "noop_steps": job.noops,
        "rounds": job.round,
        "accepted_per_step": job.accepted / job.steps if job.steps else 0.0,
        "tokens_per_step": job.step_tokens / job.steps if job.steps else 0.0,
        "tokens_per_round": job.step_tokens / job.round if job.round else 0.0,
        "queue_ms": (job.started - job.submitted) * 1e3,  # admitted, waiting for a slot
        "ttft_ms": (prefilled - job.submitted) * 1e3,  # submission to the first token, queue included
        "latency_ms": (job.finished_at - job.submitted) * 1e3,  # submission to the last token
        "prefill_ms": (prefilled - job.started) * 1e3,
        "decode_ms": decode_s * 1e3,
        "wall_ms": wall_s * 1e3,
        "decode_tokens_per_s": (new - 1) / decode_s if new > 1 else 0.0,
        "tokens_per_s": new / wall_s if wall_s > 0 else 0.0,
        "drafter_ms_per_step": job.draft_ms / max(job.steps + job.noops, 1),
        "drafter_busy_ms": job.draft_ms,
        "services": {name: v for name, v in job.service_stats.items() if name != "drafter"},
        # Base features sent to a draft head (0 without one), per verification step.
        "feature_bytes_per_step": sum(s["feature_bytes"] for s in job.service_stats.values()) / max(job.steps, 1),
        **({"trace": {**job.spans, "scheduler": spans}} if job.request.trace else {}),
    }
