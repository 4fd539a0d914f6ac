"""What a stage's forward costs for K requests' segments: one shared forward against K forwards, and a check.

Builds the first ``layers`` decoder layers of a model from its ``config.json`` alone, with random
weights (times depend on shapes, not values), gives each of ``requests`` requests a KV cache of
``context`` tokens, then times one segment of ``rows`` new rows per request: K forwards one after
another (what a stage did before issue 19) against one :func:`forward_many` (what it does now),
alternating, median of ``repeats``. It also checks that every request's hidden states are bitwise
the same both ways.

    python infra/batch_forward_cost.py ~/.cache/flowring/models/qwen-coder-1.5b --layers 14 --requests 4 --rows 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common.models.modeling import ModelSlice, causal_attend
from common.models.modeling.batch import Rows, forward_many
from common.models.modeling.spec import load_model_spec

BF16 = torch.bfloat16


def build(model_dir: Path, layers: int) -> ModelSlice:
    spec = load_model_spec(model_dir)
    model = ModelSlice(spec, (0, layers), with_embedding=True, with_head=False, dtype=BF16)
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        param.copy_(torch.ones(param.shape) if "norm" in name else 0.02 * torch.randn(param.shape, generator=generator))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--layers", type=int, default=14)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1, help="new rows per request (1: ar; a draft segment: more)")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = build(args.model_dir, args.layers)
    gen = torch.Generator().manual_seed(1)
    caches = []
    for _ in range(args.requests):
        cache = model.new_cache()
        ids = torch.randint(0, model.spec.vocab_size, (args.context,), generator=gen)
        model(ids, torch.arange(args.context), causal_attend(0, args.context), cache)
        caches.append(cache)
    n, c = args.rows, args.context
    parts = [Rows(torch.randint(0, model.spec.vocab_size, (n,), generator=gen), torch.arange(c, c + n),
                  causal_attend(c, n) if n > 1 else None, cache) for cache in caches]
    times: dict[str, list[float]] = {"one by one": [], "shared": []}
    outputs: dict[str, list[torch.Tensor]] = {}
    for _ in range(args.repeats + 1):  # the first round warms up (row blocks probed), uncounted
        for way in times:
            started = time.perf_counter()
            if way == "shared":
                out = forward_many(model, parts)
            else:
                out = [model(p.inputs, p.positions, p.attend, p.cache) for p in parts]
            times[way].append(time.perf_counter() - started)
            outputs[way] = out
            for cache in caches:
                cache.truncate(c)
    same = all(torch.equal(a, b) for a, b in zip(outputs["one by one"], outputs["shared"], strict=True))
    alone, shared = (statistics.median(times[w][1:]) * 1e3 for w in times)
    print(f"{args.layers} layers of {args.model_dir.name}, bf16, {torch.get_num_threads()} threads, "
          f"{args.requests} requests x {n} rows over {c} cached tokens, median of {args.repeats}")
    print(f"one by one {alone:.1f} ms, shared {shared:.1f} ms, ratio {alone / shared:.2f}x; bitwise equal: {same}")


if __name__ == "__main__":
    main()
