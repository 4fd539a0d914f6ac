"""Benchmark summary maths: per-prompt, per-mode generation stats -> one row per mode.

Rates and ratios are pooled, never means of per-prompt ratios: decode tokens/s is total decode tokens
(new tokens less the first, which prefill produces) over total decode time; end-to-end tokens/s is
total new tokens over total wall time; per-step figures are totals over total verification steps; a
busy ratio is a service's total busy time over total wall time. A speedup of mode A over mode B is
the ratio of their pooled decode tokens/s over the prompts both completed. Failed runs are counted,
never averaged in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LOCAL = "local"
"""The anchor mode: transformers' ``generate`` of the whole base model on one stage's cores."""
SPEEDUP_BASELINES = ("chunk", "ar", LOCAL)


@dataclass(frozen=True)
class RunRecord:
    """One generation: a prompt in a mode; ``stats`` is ``GenerateReply.stats`` when ``ok``."""

    prompt_id: str
    mode: str
    ok: bool
    stats: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    category: str = ""
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModeSummary:
    mode: str
    runs: int  # successful generations
    failures: int
    new_tokens: int
    decode_tokens_per_s: float
    tokens_per_s: float  # end to end: prefill included
    accepted_per_step: float  # accepted draft tokens per verification step
    tokens_per_step: float  # output tokens per verification step
    tokens_per_round: float
    rounds_per_run: float
    steps_per_run: float
    drafter_ms_per_step: float  # drafter time over verification and no-op steps
    drafter_busy_ratio: float
    busy_ratio: Mapping[str, float]  # stage and verifier name -> busy time / wall time
    speedup: Mapping[str, float | None]  # baseline mode -> decode tokens/s ratio (None: no baseline)


def summarize(records: Iterable[RunRecord], baselines: Sequence[str] = SPEEDUP_BASELINES) -> list[ModeSummary]:
    """One summary per mode, in the order modes first appear in ``records``."""
    records = list(records)
    modes = list(dict.fromkeys(r.mode for r in records))
    ok = {m: {r.prompt_id: r.stats for r in records if r.mode == m and r.ok} for m in modes}
    out = []
    for mode in modes:
        runs = list(ok[mode].values())
        failures = sum(1 for r in records if r.mode == mode and not r.ok)
        speedup = {b: _speedup(ok[mode], ok.get(b, {})) for b in baselines}
        out.append(_summary(mode, runs, failures, speedup))
    return out


def agreement(records: Iterable[RunRecord], reference: str = LOCAL) -> dict[str, tuple[int, int]]:
    """Per mode: (prompts whose output equals ``reference``'s, prompts both completed)."""
    records = list(records)
    ref = {r.prompt_id: r.token_ids for r in records if r.mode == reference and r.ok}
    out: dict[str, tuple[int, int]] = {}
    for r in records:
        if r.ok and r.mode != reference and r.prompt_id in ref:
            equal, total = out.get(r.mode, (0, 0))
            out[r.mode] = (equal + (r.token_ids == ref[r.prompt_id]), total + 1)
    return out


def decode_rate(runs: Iterable[Mapping[str, Any]]) -> float:
    """Total decode tokens / total decode seconds (0 when there was no decode time)."""
    runs = list(runs)
    decode_s = sum(float(s["decode_ms"]) for s in runs) / 1e3
    return sum(_decode_tokens(s) for s in runs) / decode_s if decode_s > 0 else 0.0


def service_order(name: str) -> tuple[int, int, str]:
    """Ring order: stage-1, stage-2, ..., verifier, then anything else by name."""
    if name.startswith("stage-") and name[6:].isdigit():
        return (0, int(name[6:]), name)
    return (1 if name == "verifier" else 2, 0, name)


def _summary(mode: str, runs: list[Mapping[str, Any]], failures: int, speedup: dict[str, float | None]) -> ModeSummary:
    steps = sum(int(s["steps"]) for s in runs)
    all_steps = steps + sum(int(s["noop_steps"]) for s in runs)
    rounds = sum(int(s["rounds"]) for s in runs)
    step_tokens = sum(float(s["tokens_per_step"]) * int(s["steps"]) for s in runs)
    wall_ms = sum(float(s["wall_ms"]) for s in runs)
    busy: dict[str, float] = {}
    for s in runs:
        for name, service in s["services"].items():
            busy[name] = busy.get(name, 0.0) + float(service["busy_ms"])
    return ModeSummary(
        mode=mode,
        runs=len(runs),
        failures=failures,
        new_tokens=sum(int(s["new_tokens"]) for s in runs),
        decode_tokens_per_s=decode_rate(runs),
        tokens_per_s=_ratio(sum(int(s["new_tokens"]) for s in runs), wall_ms / 1e3),
        accepted_per_step=_ratio(sum(float(s["accepted_per_step"]) * int(s["steps"]) for s in runs), steps),
        tokens_per_step=_ratio(step_tokens, steps),
        tokens_per_round=_ratio(step_tokens, rounds),
        rounds_per_run=_ratio(rounds, len(runs)),
        steps_per_run=_ratio(steps, len(runs)),
        drafter_ms_per_step=_ratio(sum(float(s["drafter_busy_ms"]) for s in runs), all_steps),
        drafter_busy_ratio=_ratio(sum(float(s["drafter_busy_ms"]) for s in runs), wall_ms),
        busy_ratio={name: _ratio(busy[name], wall_ms) for name in sorted(busy, key=service_order)},
        speedup=speedup,
    )


def _speedup(runs: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]]) -> float | None:
    common = [p for p in runs if p in baseline]
    base = decode_rate(baseline[p] for p in common)
    return decode_rate(runs[p] for p in common) / base if common and base > 0 else None


def _decode_tokens(stats: Mapping[str, Any]) -> int:
    return max(int(stats["new_tokens"]) - 1, 0)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0
