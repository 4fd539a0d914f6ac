"""A stage's forward against the same layers in transformers, on the same cores, side by side.

Both run the same decoder layers of the same checkpoint over a KV cache of ``context`` tokens and
append ``rows`` new rows (1: an autoregressive step; 16: a segment); each timing is the median of
``repeats`` runs after a warm-up, the two implementations alternating so drift hits both alike.
Weight bytes read per second (every weight of the slice is read once per forward) is set against the
host's memory read bandwidth, measured by a reduction over a large tensor.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from common.models.dtypes import torch_dtype
from common.models.modeling import causal_attend, load_slice


@dataclass(frozen=True)
class ForwardTiming:
    rows: int
    ours_ms: float
    transformers_ms: float
    weight_bytes: int

    @property
    def ratio(self) -> float:
        return self.ours_ms / self.transformers_ms

    @property
    def weight_gb_per_s(self) -> float:
        return self.weight_bytes / (self.ours_ms / 1e3) / 1e9


def memory_bandwidth_gb_per_s(megabytes: int = 1024, repeats: int = 7) -> float:
    """Bytes read per second by a reduction over a tensor far larger than any cache (best of ``repeats``).

    A forward reads every weight once, so reading is the ceiling that matters.
    """
    data = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / 1e9


def compare(base: Path, layers: tuple[int, int], rows: list[int], dtype: str = "bfloat16", context: int = 256,
            repeats: int = 15) -> list[ForwardTiming]:
    """Median forward time of our slice and of transformers' model cut to the same layers."""
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    first, last = layers
    ours = load_slice(base, layers, with_embedding=first == 0, with_head=False, dtype=torch_dtype(dtype))
    config = AutoConfig.from_pretrained(base)
    config.num_hidden_layers = last
    theirs = AutoModelForCausalLM.from_pretrained(base, config=config, dtype=torch_dtype(dtype)).model.eval()
    theirs.layers = theirs.layers[first:last]  # the same slice: layers [first, last) only
    for i, layer in enumerate(theirs.layers):
        layer.self_attn.layer_idx = i
    hidden = config.hidden_size
    weight_bytes = sum(p.numel() * p.element_size() for name, p in ours.named_parameters() if "embed" not in name)
    out = []
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `past_key_values`: the name both 5.x versions take
        prompt = torch.randn(1, context, hidden, generator=generator).to(torch_dtype(dtype))
        ids = torch.randint(0, config.vocab_size, (context,), generator=generator)
        for n in rows:
            new_ids = torch.randint(0, config.vocab_size, (n,), generator=generator)
            new_hidden = torch.randn(1, n, hidden, generator=generator).to(torch_dtype(dtype))
            cache = ours.new_cache()
            ours(ids if first == 0 else prompt[0], torch.arange(context), causal_attend(0, context), cache)
            attend = None if n == 1 else causal_attend(context, n)

            def run_ours(n=n, cache=cache, attend=attend, new_ids=new_ids, new_hidden=new_hidden) -> None:
                ours(new_ids if first == 0 else new_hidden[0], torch.arange(context, context + n), attend, cache)
                cache.truncate(context)

            kv = DynamicCache()
            if first == 0:
                theirs(input_ids=ids[None], past_key_values=kv, use_cache=True)
            else:
                theirs(inputs_embeds=prompt, past_key_values=kv, use_cache=True)

            def run_theirs(n=n, kv=kv, new_ids=new_ids, new_hidden=new_hidden) -> None:
                if first == 0:
                    theirs(input_ids=new_ids[None], past_key_values=kv, use_cache=True)
                else:
                    theirs(inputs_embeds=new_hidden, past_key_values=kv, use_cache=True)
                kv.crop(-n)

            ours_ms, theirs_ms = _alternate(run_ours, run_theirs, repeats)
            out.append(ForwardTiming(n, ours_ms, theirs_ms, weight_bytes))
    return out


def _alternate(a: Callable[[], None], b: Callable[[], None], repeats: int) -> tuple[float, float]:
    for _ in range(2):  # warm-up
        a()
        b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times_a), statistics.median(times_b)
