"""A stage's forward with row-invariant and with fused numerics, and against transformers, side by side.

All run the same decoder layers of the same checkpoint over a KV cache of ``context`` tokens and
append ``rows`` new rows (1: an autoregressive step; 16: a tree segment; 64-256: a prefill chunk);
each timing is the median of ``repeats`` runs after a warm-up, the variants alternating so drift
hits all alike. Weight bytes read per second (every weight of the slice is read once per forward)
is set against the host's memory read bandwidth, measured by a reduction over a large tensor.
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
class OpCost:
    """One operator's self CPU time per forward (torch.profiler), and its calls per forward."""

    name: str
    ms: float
    calls: float


@dataclass(frozen=True)
class ForwardTiming:
    rows: int
    invariant_ms: float
    fused_ms: float
    transformers_ms: float | None  # None: not timed
    weight_bytes: int
    invariant_ops: tuple[OpCost, ...] = ()
    fused_ops: tuple[OpCost, ...] = ()

    @property
    def ratio(self) -> float:
        """Row-invariant over fused time: the cost of reproducibility."""
        return self.invariant_ms / self.fused_ms

    @property
    def weight_gb_per_s(self) -> float:
        return self.weight_bytes / (self.invariant_ms / 1e3) / 1e9


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
            repeats: int = 15, transformers: bool = True, ops: int = 0) -> list[ForwardTiming]:
    """Median forward time of our slice in both numerics, and of transformers' model cut to the same layers.

    ``ops``: also profile each numerics per operator and keep its ``ops`` costliest operators.
    """
    first, _ = layers
    ours = load_slice(base, layers, with_embedding=first == 0, with_head=False, dtype=torch_dtype(dtype))
    theirs = _transformers_slice(base, layers, dtype) if transformers else None
    hidden = ours.spec.hidden_size
    weight_bytes = sum(p.numel() * p.element_size() for name, p in ours.named_parameters() if "embed" not in name)
    out = []
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `past_key_values`: the name both 5.x versions take
        prompt = torch.randn(context, hidden, generator=generator).to(torch_dtype(dtype))
        ids = torch.randint(0, ours.spec.vocab_size, (context,), generator=generator)
        for n in rows:
            new_ids = torch.randint(0, ours.spec.vocab_size, (n,), generator=generator)
            new_hidden = torch.randn(n, hidden, generator=generator).to(torch_dtype(dtype))
            cache = ours.new_cache()
            ours(ids if first == 0 else prompt, torch.arange(context), causal_attend(0, context), cache)
            attend = None if n == 1 else causal_attend(context, n)

            def run_ours(flag: bool, n=n, cache=cache, attend=attend, new_ids=new_ids, new_hidden=new_hidden) -> None:
                ours.use_row_invariant(flag)
                ours(new_ids if first == 0 else new_hidden, torch.arange(context, context + n), attend, cache)
                cache.truncate(context)

            runners = [lambda: run_ours(True), lambda: run_ours(False)]
            if theirs is not None:
                runners.append(_transformers_runner(theirs, first == 0, ids, prompt, new_ids, new_hidden))
            times = _alternate(runners, repeats)
            costs = [_op_costs(lambda flag=flag: run_ours(flag), ops) if ops else () for flag in (True, False)]
            out.append(ForwardTiming(n, times[0], times[1], times[2] if theirs is not None else None, weight_bytes,
                                     *costs))
    ours.use_row_invariant(True)
    return out


def _transformers_slice(base: Path, layers: tuple[int, int], dtype: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    first, last = layers
    config = AutoConfig.from_pretrained(base)
    config.num_hidden_layers = last
    theirs = AutoModelForCausalLM.from_pretrained(base, config=config, dtype=torch_dtype(dtype)).model.eval()
    theirs.layers = theirs.layers[first:last]  # the same slice: layers [first, last) only
    for i, layer in enumerate(theirs.layers):
        layer.self_attn.layer_idx = i
    return theirs


def _transformers_runner(theirs: torch.nn.Module, embed: bool, ids: torch.Tensor, prompt: torch.Tensor,
                         new_ids: torch.Tensor, new_hidden: torch.Tensor) -> Callable[[], None]:
    from transformers import DynamicCache

    kv = DynamicCache()
    if embed:
        theirs(input_ids=ids[None], past_key_values=kv, use_cache=True)
    else:
        theirs(inputs_embeds=prompt[None], past_key_values=kv, use_cache=True)
    n = new_ids.numel()

    def run() -> None:
        if embed:
            theirs(input_ids=new_ids[None], past_key_values=kv, use_cache=True)
        else:
            theirs(inputs_embeds=new_hidden[None], past_key_values=kv, use_cache=True)
        kv.crop(-n)

    return run


def _op_costs(run: Callable[[], None], top: int, forwards: int = 3) -> tuple[OpCost, ...]:
    """The ``top`` operators by self CPU time over ``forwards`` forwards, per forward."""
    from torch.profiler import ProfilerActivity, profile

    run()  # warm-up: probes and allocations stay out of the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(forwards):
            run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return tuple(OpCost(e.key, e.self_cpu_time_total / 1e3 / forwards, e.count / forwards) for e in events)


def _alternate(runners: list[Callable[[], None]], repeats: int) -> list[float]:
    for _ in range(2):  # warm-up
        for run in runners:
            run()
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for run, samples in zip(runners, times, strict=True):
            started = time.perf_counter()
            run()
            samples.append((time.perf_counter() - started) * 1e3)
    return [statistics.median(samples) for samples in times]

