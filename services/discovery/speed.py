"""The agent's speed probe: forwards per second of one reference decoder layer, measured once and cached.

A board has no model before the head ships it a slice, so the probe builds one decoder layer of a fixed
reference shape (Qwen2.5-1.5B's: hidden 1536, MLP 8960, 12 heads, 2 KV heads) with random weights and
times a ``ROWS``-row step through flowring's own layer code (row-invariant, as the services run it), as
``flowring plan --measure`` times a real model's first layer; the first forward (which also probes the
kernels' row blocks) is not counted. The figure is in reference-layer forwards per second: boards measured this way
compare with each other, which is all the planner needs (it splits by relative speed). The result is
cached in ``FLOWRING_HOME/agent/speed.json`` under the probe's description, the flowring and torch
versions and the thread count; a change of any of them measures again.

The row cost (``measured_row_cost``, cached in ``agent/row-cost.json`` the same way) is what a ``ROWS``-row
forward of that layer costs in one-row forwards, over the same cached context. Speculation verifies many
rows to save steps of one, so it pays only where rows come almost free: where the matrix products read
each weight once for all rows (on a CPU with bf16 instructions, or in float32). Where the products run
row by row (bf16 on a CPU without them, e.g. AVX2 only), a tree's rows cost what its accepted tokens save.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median

ROWS = 16
REPEATS = 3
REFERENCE_CONFIG = {
    "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
    "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
}


@dataclass(frozen=True)
class Measured:
    value: float  # forwards per second (measured_speed), or one-row forwards per 16-row one (measured_row_cost)
    probe: str  # what was measured
    cached: bool  # read from the cache rather than measured now
    seconds: float  # how long measuring took (0 when cached)


def measured_speed(home: Path, dtype: str, *, remeasure: bool = False, repeats: int = REPEATS) -> Measured:
    """The cached figure for this probe, versions and thread count, else a fresh measurement (then cached)."""
    return _cached(home / "agent" / "speed.json", "forwards_per_s", f"{ROWS} rows", dtype,
                   lambda: reference_layer_speed(dtype, repeats=repeats), remeasure)


def measured_row_cost(home: Path, dtype: str, *, remeasure: bool = False, repeats: int = REPEATS) -> Measured:
    """The row cost: a ``ROWS``-row forward's time over a one-row forward's (cached like ``measured_speed``)."""
    return _cached(home / "agent" / "row-cost.json", "row_cost", f"{ROWS} rows / 1 row", dtype,
                   lambda: reference_row_cost(dtype, repeats=repeats), remeasure)


def _cached(cache: Path, field: str, rows: str, dtype: str, measure: Callable[[], float], remeasure: bool) -> Measured:
    import torch

    from services.cluster.board_agent import flowring_version

    probe = (f"{REFERENCE_CONFIG['model_type']}-{REFERENCE_CONFIG['hidden_size']}x"
             f"{REFERENCE_CONFIG['intermediate_size']} {dtype} {rows} {torch.get_num_threads()} thread(s)")
    key = f"{probe} | flowring {flowring_version()} | torch {torch.__version__}"
    if not remeasure:
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key and float(saved[field]) > 0:
                return Measured(float(saved[field]), probe, True, 0.0)
        except (OSError, ValueError, KeyError, TypeError):  # absent or unreadable: measure
            pass
    began = time.perf_counter()
    value = measure()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, field: value}) + "\n")
    return Measured(value, probe, False, time.perf_counter() - began)


def reference_layer_speed(dtype: str, *, repeats: int = REPEATS) -> float:
    """Forwards per second of a ``ROWS``-row step through the reference layer (median of ``repeats``)."""
    return 1.0 / max(_step_seconds(_reference_layer(dtype), 0, ROWS, repeats), 1e-9)


def reference_row_cost(dtype: str, *, repeats: int = REPEATS) -> float:
    """A ``ROWS``-row step's time over a one-row step's, both after ``ROWS`` cached rows (medians of ``repeats``)."""
    layer = _reference_layer(dtype)
    one = _step_seconds(layer, ROWS, 1, repeats)
    return _step_seconds(layer, ROWS, ROWS, repeats) / max(one, 1e-9)


def _reference_layer(dtype: str):  # -> ModelSlice, imported lazily (torch)
    import torch

    from common.models.modeling.slice import ModelSlice
    from common.models.modeling.spec import ModelSpec

    spec = ModelSpec.from_config(REFERENCE_CONFIG)
    layer = ModelSlice(spec, (0, 1), with_embedding=False, with_head=False, dtype=getattr(torch, dtype))
    gen = torch.Generator().manual_seed(0)
    for param in layer.parameters():  # allocated uninitialised: random values, not whatever memory held
        param.normal_(0.0, 0.02, generator=gen)
    return layer


def _step_seconds(layer, context: int, rows: int, repeats: int) -> float:
    """Median time of a forward of ``rows`` new rows (causal) after ``context`` cached ones; the first run warms
    up (and probes the kernels' row blocks) and is not counted."""
    import torch

    from common.models.modeling import causal_attend

    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(context + rows, layer.spec.hidden_size, generator=gen).to(layer.dtype)
    cache = layer.new_cache()
    times = []
    for i in range(repeats + 1):
        cache.reset()
        if context:
            layer.forward(hidden[:context], torch.arange(context), causal_attend(0, context), cache)
        attend = None if rows == 1 else causal_attend(context, rows)
        start = time.perf_counter()
        layer.forward(hidden[context:], torch.arange(context, context + rows), attend, cache)
        if i:
            times.append(time.perf_counter() - start)
    return median(times)
