"""The agent's speed probe: forwards per second of one reference decoder layer, measured once and cached.

A board has no model before the head ships it a slice, so the probe builds one decoder layer of a fixed
reference shape (Qwen2.5-1.5B's: hidden 1536, MLP 8960, 12 heads, 2 KV heads) with random weights and
times a ``ROWS``-row step through flowring's own layer code (row-invariant, as the services run it), as
``flowring plan --measure`` times a real model's first layer; the first forward (which also probes the
kernels' row blocks) is not counted. The figure is in reference-layer forwards per second: boards measured this way
compare with each other, which is all the planner needs (it splits by relative speed). The result is
cached in ``FLOWRING_HOME/agent/speed.json`` under the probe's description, the flowring and torch
versions and the thread count; a change of any of them measures again.
"""

from __future__ import annotations

import json
import time
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
class Speed:
    forwards_per_s: float
    probe: str  # what was measured
    cached: bool  # read from the cache rather than measured now
    seconds: float  # how long measuring took (0 when cached)


def measured_speed(home: Path, dtype: str, *, remeasure: bool = False, repeats: int = REPEATS) -> Speed:
    """The cached figure for this probe, versions and thread count, else a fresh measurement (then cached)."""
    import torch

    from services.cluster.board_agent import flowring_version

    probe = (f"{REFERENCE_CONFIG['model_type']}-{REFERENCE_CONFIG['hidden_size']}x"
             f"{REFERENCE_CONFIG['intermediate_size']} {dtype} {ROWS} rows {torch.get_num_threads()} thread(s)")
    key = f"{probe} | flowring {flowring_version()} | torch {torch.__version__}"
    cache = home / "agent" / "speed.json"
    if not remeasure:
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key and float(saved["forwards_per_s"]) > 0:
                return Speed(float(saved["forwards_per_s"]), probe, True, 0.0)
        except (OSError, ValueError, KeyError, TypeError):  # absent or unreadable: measure
            pass
    began = time.perf_counter()
    speed = reference_layer_speed(dtype, repeats=repeats)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "forwards_per_s": speed}) + "\n")
    return Speed(speed, probe, False, time.perf_counter() - began)


def reference_layer_speed(dtype: str, *, repeats: int = REPEATS) -> float:
    """Forwards per second of a ``ROWS``-row step through the reference layer (median of ``repeats``)."""
    import torch

    from common.models.modeling import causal_attend
    from common.models.modeling.slice import ModelSlice
    from common.models.modeling.spec import ModelSpec

    spec = ModelSpec.from_config(REFERENCE_CONFIG)
    layer = ModelSlice(spec, (0, 1), with_embedding=False, with_head=False, dtype=getattr(torch, dtype))
    gen = torch.Generator().manual_seed(0)
    for param in layer.parameters():  # allocated uninitialised: random values, not whatever memory held
        param.normal_(0.0, 0.02, generator=gen)
    hidden = torch.randn(ROWS, spec.hidden_size, generator=gen).to(layer.dtype)
    positions, attend, cache = torch.arange(ROWS), causal_attend(0, ROWS), layer.new_cache()
    times = []
    for i in range(repeats + 1):  # the first run warms up and is not counted
        cache.reset()
        start = time.perf_counter()
        layer.forward(hidden, positions, attend, cache)
        if i:
            times.append(time.perf_counter() - start)
    return 1.0 / max(median(times), 1e-9)
