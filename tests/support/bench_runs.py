"""A small synthetic ``flowring bench --json`` run with known costs, for the projection's tests."""

from __future__ import annotations

from common.projection import ForwardCost

LAYER = ForwardCost(2.0, 0.1)  # per layer: 2 ms a forward + 0.1 ms a row
HEAD = ForwardCost(5.0, 0.5)
PROMPT = 10


def _service(layers: int, forwards: int, rows: int, cost: ForwardCost) -> dict:
    return {"busy_ms": layers * cost.ms(forwards, rows), "forwards": forwards, "rows": rows, "feature_bytes": 0}


def _record(mode: str, steps: int, rounds: int, decode_ms: float, draft_ms: float, forwards: int, rows: int) -> dict:
    """A request on 2 stages of 4 layers; stage forwards and rows include a one-forward prefill."""
    stages = {f"stage-{i}": _service(4, forwards + 1, rows + PROMPT, LAYER) for i in (1, 2)}
    stats = {
        "new_tokens": 2 * steps + 1 if mode != "ar" else steps + 1, "steps": steps, "rounds": rounds,
        "prompt_tokens": PROMPT, "prefill_ms": 50.0, "decode_ms": decode_ms, "drafter_ms_per_step": draft_ms,
        "services": {**stages, "verifier": _service(1, forwards + 1, rows + 1, HEAD)},
    }
    return {"prompt_id": "1", "mode": mode, "ok": True, "stats": stats}


def make_run(ar_step_ms: float = 100.0) -> dict:
    records = [
        _record("ar", 20, 20, 20 * ar_step_ms, 0.0, 20, 20),
        _record("chunk", 5, 5, 2000.0, 150.0, 15, 60),
        _record("flowspec", 8, 2, 1500.0, 120.0, 10, 70),
    ]
    stage = {"layers": [0, 4]}
    return {
        "cluster": {"stages": [{"name": "stage-1", **stage}, {"name": "stage-2", "layers": [4, 8]}],
                    "prefill_chunk": 64, "draft_settings": {"fill_nodes": 11, "segment_cap": 16}},
        "records": [{"prompt_id": "1", "mode": "local", "ok": True, "stats": {}}, *records],
        "summary": [{"mode": m, "decode_tokens_per_s": v} for m, v in (("local", 4.0), ("ar", 10.0))],
    }
