"""Operators dispatched and MB written per row-invariant attention call, for Qwen2.5-Coder-1.5B's heads.

Deterministic and machine-independent (it counts, it does not time): a one-row step, a 16-row causal
segment, a 16-row tree segment and a 256-row prefill chunk, each over a 256-token context. ``--against``
another checkout's ``blocked_attention.py`` (e.g. main's) to print both side by side.

    python infra/attention_op_count.py [--against /work/main/common/models/modeling/blocked_attention.py]
"""

from __future__ import annotations

import argparse
import importlib.util
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from common.models.modeling import causal_attend
from common.models.modeling.blocked_attention import blocked_attention

_VIEWS = ("view", "_unsafe_view", "as_strided", "slice", "transpose", "t", "expand", "unsqueeze", "select", "permute",
          "alias", "detach")


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        self.ops[name] += 1
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor) and name not in _VIEWS:
                self.bytes += t.numel() * t.element_size()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="another blocked_attention.py to count beside this one")
    args = parser.parse_args()
    variants = {"this checkout": blocked_attention}
    if args.against:
        spec = importlib.util.spec_from_file_location("other_blocked_attention", args.against)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        variants = {args.against: module.blocked_attention, **variants}
    generator = torch.Generator().manual_seed(0)
    print("| rows (context 256) | blocked_attention | operators per call | MB written per call |\n|---|---|---|---|")
    for rows, tree in ((1, False), (16, False), (16, True), (256, False)):
        total = 256 + rows
        q = torch.randn(12, rows, 128, generator=generator).bfloat16()
        keys = torch.randn(2, total, 128, generator=generator).bfloat16()
        values = torch.randn(2, total, 128, generator=generator).bfloat16()
        attend = None if rows == 1 else causal_attend(256, rows)
        if tree:  # a committed prefix, then scattered tree slots
            attend = attend & (torch.rand(rows, total, generator=generator) < 0.7)
            attend[:, :216] = True
        for name, run in variants.items():
            with _Count() as count:
                run(q, keys, values, attend, 8)
            print(f"| {rows}{' tree' if tree else ''} | {name} | {sum(count.ops.values())} | {count.bytes / 1e6:.2f} |")


if __name__ == "__main__":
    main()
