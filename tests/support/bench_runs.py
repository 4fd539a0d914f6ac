"""A small synthetic ``flowring bench --json --trace`` run with known costs, for the projection's tests.

Stages of 8 layers in all, a forward costing ``LAYER`` per layer (``HEAD`` at the verifier), hops as
``HOPS``. The ar requests are laid out as the ring runs them (one thing at a time), so their decode time
is known by hand: ``AR_STEP_MS`` a step on 2 stages. The chunk and flowspec requests carry the spans the
fit reads (forwards, the drafter's drafts and sends), laid out one after another.
"""

from __future__ import annotations

from common.observability.trace import SPAN_KINDS
from common.projection.fit import Hops
from common.projection.ring import ForwardCost
from common.speculation.tree import segment_sizes

LAYERS = 8
LAYER = ForwardCost(2.0, 0.1)  # per layer: 2 ms a forward + 0.1 ms a row
HEAD = ForwardCost(5.0, 0.5)
HOPS = Hops(forward_ms=1.0, segment_ms=0.5, verdict_ms=2.0, expand_ms=0.5)
PROMPT = 10
FILL_NODES = 11  # the fill tree, root included (draft settings' fill_nodes + 1)
DRAFT_MS = 30.0  # the drafter's ms per Expand in chunk and flowspec


def ar_step_ms(stages: int) -> float:
    """One ar step on ``stages`` stages, by hand: the Expand, the segment's hop, every forward and the hops
    between them, the verdict's hop."""
    compute = LAYERS * LAYER.ms(1, 1) + HEAD.ms(1, 1)
    return HOPS.expand_ms + HOPS.segment_ms + compute + stages * HOPS.forward_ms + HOPS.verdict_ms


class _Trace:
    """Flat (kind, start us, duration us) triples per service."""

    def __init__(self) -> None:
        self.flat: dict[str, list[int]] = {}

    def add(self, service: str, kind: str, start_ms: float, dur_ms: float) -> float:
        self.flat.setdefault(service, []).extend([SPAN_KINDS.index(kind), round(start_ms * 1e3), round(dur_ms * 1e3)])
        return start_ms + dur_ms


def _names(stages: int) -> list[str]:
    return [f"stage-{i + 1}" for i in range(stages)]


def _stats(mode: str, trace: _Trace, decode_ms: float, steps: int, rounds: int, new_tokens: int,
           rows: dict[str, tuple[int, int]]) -> dict:
    """``rows``: per service its decode (forwards, rows); the prefill's are added as bench reports them."""
    services = {}
    for name, (forwards, count) in rows.items():
        prefill = (1, 1) if name == "verifier" else (1, PROMPT)
        services[name] = {"busy_ms": 0.0, "forwards": forwards + prefill[0], "rows": count + prefill[1],
                          "feature_bytes": 0}
    return {"new_tokens": new_tokens, "steps": steps, "noop_steps": 0, "rounds": rounds, "prompt_tokens": PROMPT,
            "prefill_ms": 50.0, "decode_ms": decode_ms, "services": services, "trace": trace.flat}


def _ar_record(stages: int, steps: int) -> dict:
    trace, layers = _Trace(), LAYERS // stages
    t = trace.add("scheduler", "schedule", 0.0, 0.0)  # the decision on the prefill's verdict
    for _ in range(steps):
        t = trace.add("drafter", "draft", t + HOPS.expand_ms, 0.0)
        trace.add("drafter", "send", t, 0.0)
        trace.add("drafter", "send", t, 0.0)
        t += HOPS.segment_ms
        for i, name in enumerate(_names(stages)):
            t = trace.add(name, "forward", t + (HOPS.forward_ms if i else 0.0), layers * LAYER.ms(1, 1))
        t = trace.add("verifier", "forward", t + HOPS.forward_ms, HEAD.ms(1, 1))
        t = trace.add("scheduler", "schedule", t + HOPS.verdict_ms, 0.0)
    rows = {name: (steps, steps) for name in [*_names(stages), "verifier"]}
    return {"mode": "ar", "ok": True, "stats": _stats("ar", trace, t, steps, steps, steps + 1, rows)}


def _tree_record(mode: str, stages: int, segments: list[list[int]], decode_ms: float, steps: int) -> dict:
    """One request whose Expands sent ``segments`` (each Expand: its segments' sizes), in order."""
    trace, layers = _Trace(), LAYERS // stages
    t = trace.add("scheduler", "schedule", 0.0, 0.0)
    for sizes in segments:
        t = trace.add("drafter", "draft", t + 1.0, DRAFT_MS)
        for _ in range(len(sizes) + 1):  # the segments, then the report
            trace.add("drafter", "send", t, 0.0)
        for size in sizes:
            for name in _names(stages):
                t = trace.add(name, "forward", t, layers * LAYER.ms(1, size))
            t = trace.add("verifier", "forward", t, HEAD.ms(1, size))
    forwards, rows = sum(len(s) for s in segments), sum(sum(s) for s in segments)
    counts = {name: (forwards, rows) for name in [*_names(stages), "verifier"]}
    rounds = sum(1 for s in segments if len(s) > 1)
    return {"mode": mode, "ok": True, "stats": _stats(mode, trace, decode_ms, steps, rounds, 2 * steps + 1, counts)}


def make_run(stages: int = 2, local: float = 4.0) -> dict:
    """A run on ``stages`` stages: one request per mode; the summary holds the decode rates it implies
    (ar's by hand; chunk's and flowspec's as recorded in their stats)."""
    fill = segment_sizes(FILL_NODES, stages + 1, 16)
    chunk = _tree_record("chunk", stages, [fill] * 4, 600.0, 4)
    flowspec = _tree_record("flowspec", stages, [fill, [8], [8], [8], fill, [8]], 500.0, 6)
    records = [_ar_record(stages, 20), chunk, flowspec]
    summary = [{"mode": "local", "decode_tokens_per_s": local}]
    for r in records:
        s = r["stats"]
        summary.append({"mode": r["mode"], "decode_tokens_per_s": (s["new_tokens"] - 1) / s["decode_ms"] * 1e3})
    per_stage = LAYERS // stages
    return {
        "settings": {"prompts": "p.jsonl", "num_prompts": 1, "max_new_tokens": 48, "temperature": 0.0},
        "cluster": {"base": "base", "draft": "draft", "draft_head": "", "dtype": "bfloat16",
                    "stages": [{"name": n, "layers": [i * per_stage, (i + 1) * per_stage]}
                               for i, n in enumerate(_names(stages))],
                    "draft_settings": {"fill_nodes": FILL_NODES - 1, "segment_cap": 16, "grow_levels": 3}},
        "records": [{"mode": "local", "ok": True, "stats": {}}, *records],
        "summary": summary,
    }
