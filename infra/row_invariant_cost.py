"""What row-invariant numerics cost a stage's forward, and a bitwise check of them on real shapes.

Builds the first ``layers`` decoder layers of a model from its ``config.json`` alone, with random
weights (times and kernel paths depend on shapes, not values), fills a KV cache of ``context``
tokens, then times a forward of 1, 16 and 64 new rows with fused kernels and with row-invariant
ones, alternating, median of ``repeats``. It prints the row blocks probed for each weight shape and
whether each row of a 16-row causal segment equals, bitwise, the same row computed alone.

    python infra/row_invariant_cost.py ~/.cache/flowring/models/qwen-coder-1.5b --layers 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common.models.modeling import ModelSlice, causal_attend, invariant
from common.models.modeling.spec import load_model_spec

BF16 = torch.bfloat16


def build(model_dir: Path, layers: int, row_invariant: bool) -> ModelSlice:
    spec = load_model_spec(model_dir)
    model = ModelSlice(spec, (0, layers), with_embedding=True, with_head=False, dtype=BF16, row_invariant=row_invariant)
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        fill = torch.ones(param.shape) if "norm" in name else 0.02 * torch.randn(param.shape, generator=generator)
        param.copy_(fill)
    return model


def rows_alone_match(model: ModelSlice, context: int) -> bool:
    ids = torch.randint(0, model.spec.vocab_size, (context + 16,), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache()
    model(ids[:context], torch.arange(context), causal_attend(0, context), cache)
    segment = model(ids[context:], torch.arange(context, context + 16), causal_attend(context, 16), cache)
    cache.truncate(context)
    alone = []
    for i in range(16):
        alone.append(model(ids[context + i : context + i + 1], torch.tensor([context + i]), None, cache))
    return torch.equal(segment, torch.cat(alone))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    model_dir = args.model.expanduser()
    models = {flag: build(model_dir, args.layers, flag) for flag in (False, True)}
    print(f"{model_dir.name}: layers [0, {args.layers}), bf16, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, context {args.context}")
    print("rows of a 16-row segment bitwise equal to each row alone:", rows_alone_match(models[True], args.context))
    shapes = sorted({tuple(p.shape) for n, p in models[True].named_parameters() if p.dim() == 2 and "embed" not in n})
    for out_features, in_features in shapes:
        blocks = invariant.probe_row_blocks(out_features, in_features, BF16, "cpu", torch.get_num_threads())
        print(f"weight {out_features}x{in_features}: row blocks {blocks.smallest}..{blocks.largest}")
    ids = torch.randint(0, models[True].spec.vocab_size, (args.context + 64,), generator=torch.Generator().manual_seed(2))
    for rows in (1, 16, 64):
        caches = {}
        for flag, model in models.items():
            caches[flag] = model.new_cache()
            model(ids[: args.context], torch.arange(args.context), causal_attend(0, args.context), caches[flag])
        new, positions = ids[args.context : args.context + rows], torch.arange(args.context, args.context + rows)
        attend = None if rows == 1 else causal_attend(args.context, rows)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats + 2):
            for flag, model in models.items():
                started = time.perf_counter()
                model(new, positions, attend, caches[flag])
                times[flag].append((time.perf_counter() - started) * 1e3)
                caches[flag].truncate(args.context)
        fused, rowwise = statistics.median(times[False][2:]), statistics.median(times[True][2:])
        print(f"{rows} rows: fused {fused:.1f} ms, row-invariant {rowwise:.1f} ms ({rowwise / fused:.2f}x)")


if __name__ == "__main__":
    main()
