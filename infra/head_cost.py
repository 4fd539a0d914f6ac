"""Draft cost per tree level: a draft head's growth step against one full forward of the base model.

Usage: python infra/head_cost.py --base qwen-coder-1.5b [--head DIR] [--dtype bfloat16] [--threads 4]
Without --head a randomly initialised head of the default training shape is timed (cost does not depend
on the weights). Both run on the CPU with the given threads over a committed context of --context
tokens: the base forwards a segment of --rows tree rows (what a stage pipeline verifies per step, all
layers together), the head grows a tree by one level from --leaves leaves. Prints medians in ms and
the ratio, which the issue's target bounds at 15%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.models.dtypes import MODEL_DTYPES, torch_dtype
from common.models.modeling import causal_attend, load_model_spec, load_slice
from common.models.store import resolve
from common.speculation.drafting import TreeShape
from common.speculation.heads import FeaturePairs, HeadTreeDrafter, load_head
from common.speculation.heads.model import new_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--head", type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=MODEL_DTYPES)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--leaves", type=int, default=4)
    parser.add_argument("--draft-vocab", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype, base = torch_dtype(args.dtype), resolve(args.base)
    spec = load_model_spec(base)
    if args.head:
        head = load_head(args.head, base, dtype=dtype)
    else:
        ids = torch.arange(min(args.draft_vocab, spec.vocab_size))
        head = new_head(base, intermediate_size=spec.intermediate_size // 4, draft_ids=ids, dtype=dtype)
    head.requires_grad_(False)
    model = load_slice(base, None, with_embedding=True, with_head=True, dtype=dtype)
    tokens = torch.randint(0, 1000, (args.context + args.rows,))

    def base_forward() -> None:
        cache = model.new_cache()
        model(tokens[: args.context], torch.arange(args.context), causal_attend(0, args.context), cache)
        started = time.perf_counter()
        hidden = model(tokens[args.context :], torch.arange(args.context, args.context + args.rows),
                       causal_attend(args.context, args.rows), cache)
        model.logits(hidden)
        return (time.perf_counter() - started) * 1e3

    def head_level() -> float:
        drafter = HeadTreeDrafter(head)
        drafter.extend_context(FeaturePairs(torch.randn(args.context, spec.hidden_size), tuple(tokens[1 : args.context + 1].tolist())))
        tree = drafter.draft(int(tokens[args.context]), TreeShape(nodes=args.leaves, depth=1, top_k=args.leaves))
        started = time.perf_counter()
        drafter.grow_best(tree, leaves=args.leaves, width=args.leaves * 2, top_k=args.leaves)
        return (time.perf_counter() - started) * 1e3

    with torch.no_grad():
        base_ms = statistics.median(base_forward() for _ in range(args.repeats))
        head_ms = statistics.median(head_level() for _ in range(args.repeats))
    print(f"base forward of {args.rows} rows after {args.context}: {base_ms:.1f} ms; head growth level from "
          f"{args.leaves} leaves (draft vocab {head.config.draft_vocab_size}): {head_ms:.1f} ms; "
          f"ratio {head_ms / base_ms:.1%} ({args.dtype}, {args.threads} threads)")


if __name__ == "__main__":
    main()
