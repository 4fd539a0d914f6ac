"""Where a forward's time goes on a GPU: torch.profiler over N steps of each hot path of the ring.

Usage (GPU machine):  python3 infra/gpu/cuda_profile.py --base /root/models/qwen-coder-1.5b --device cuda
      (CPU check):    python3 infra/gpu/cuda_profile.py --tiny --device cpu --steps 3

Steps profiled, each one as its service runs it (2 stages: stage 1 holds the first half of the layers):
  stage-ar-{inv,fused}    a stage forward of 1 row (an autoregressive step) over a context, hidden states
                          then copied to the host as the wire does; row-invariant numerics, then fused kernels;
  stage-tree-{inv,fused}  the same with 16 rows of a draft tree (tree attention mask);
  stage-tree-inv-nodet    stage-tree-inv with torch's deterministic algorithms off (their cost on CUDA);
  head-extend             the head drafter taking 3 committed pairs (a verdict's accepted tokens);
  head-fill               the head drafting a new round's tree (24 nodes, 5 levels, top 4);
  head-grow               the head growing one level (children of the 4 best leaves, 12 kept);
  verify-{inv,fused}      the verifier's decision on 16 rows: head argmax, greedy acceptance, features normed.
For each: wall ms per step (device synchronised around each step), CPU self ms and CUDA self ms per step
from the profiler, and per step the counts of host synchronisations (cudaStreamSynchronize,
cudaDeviceSynchronize, cudaEventSynchronize), copies (cudaMemcpy*), scalar reads (aten::_local_scalar_dense,
i.e. .item()) and aten::nonzero. Then the top CPU ops of each step. ``--json FILE`` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.models.devices import prepare_device  # noqa: E402
from common.models.modeling import causal_attend, invariant, load_model_spec, load_slice  # noqa: E402
from common.speculation.drafting import TreeShape  # noqa: E402
from common.speculation.heads.drafter import FeaturePairs, HeadTreeDrafter  # noqa: E402
from common.speculation.verification import accept_greedy_ids  # noqa: E402

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
STEP = "flowring.step"


@dataclass
class Result:
    name: str
    wall_ms: float
    cpu_self_ms: float
    cuda_self_ms: float
    syncs: float
    copies: float
    items: float
    nonzeros: float
    top_ops: list[tuple[str, float, float]] = field(default_factory=list)  # name, self CPU ms per step, calls


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, setup: Callable[[], object], step: Callable[[object], object], steps: int,
            device: torch.device, top: int) -> Result:
    """Wall time of ``step`` (after an untimed ``setup`` each time), then the same under the profiler."""
    for _ in range(2):  # warm-up: probes, allocator, kernels' first launch
        step(setup())
    walls = []
    for _ in range(steps):
        state = setup()
        _sync(device)
        began = time.perf_counter()
        step(state)
        _sync(device)
        walls.append(time.perf_counter() - began)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            state = setup()
            _sync(device)
            with record_function(STEP):
                step(state)
            _sync(device)
    return summarise(name, prof.events(), steps, sorted(walls)[len(walls) // 2] * 1e3, top)


def summarise(name: str, events, steps: int, wall_ms: float, top: int) -> Result:
    """Totals of the events that began inside a step, per step."""
    spans = [(e.time_range.start, e.time_range.end) for e in events if e.name == STEP]
    # Host-side events only (ops and CUDA runtime calls): a kernel's time is counted once, on the runtime call
    # that launched it, and the device events' own entries (on the GPU's clock) are left out.
    inside = [e for e in events if e.name != STEP and e.device_type == DeviceType.CPU
              and any(s <= e.time_range.start < t for s, t in spans)]
    cpu_self = sum(e.self_cpu_time_total for e in inside)
    device_time = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    cuda_self = sum(getattr(e, device_time) for e in inside)
    names: dict[str, int] = defaultdict(int)
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e in inside:
        names[e.name] += 1
        ops[e.name][0] += e.self_cpu_time_total
        ops[e.name][1] += 1
    per = 1.0 / steps
    copies = sum(n for k, n in names.items() if k.startswith("cudaMemcpy"))
    ranked = sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]
    return Result(name, wall_ms, cpu_self * per / 1e3, cuda_self * per / 1e3, sum(names[s] for s in SYNCS) * per,
                  copies * per, names["aten::_local_scalar_dense"] * per, names["aten::nonzero"] * per,
                  [(op, t * per / 1e3, c * per) for op, (t, c) in ranked])


def stage_steps(base: Path, dtype: torch.dtype, device: torch.device, context: int, rng: random.Random):
    """(name, setup, step) of a stage-1 forward: 1 row and a 16-row tree, both numerics."""
    spec = load_model_spec(base)
    model = load_slice(base, (0, spec.num_layers // 2), with_embedding=True, with_head=False, dtype=dtype,
                       device=device, row_invariant=True)
    cache = model.new_cache()
    prompt = torch.tensor([rng.randrange(3, spec.vocab_size) for _ in range(context)])
    model(prompt, torch.arange(context), causal_attend(0, context), cache)
    parents = [-1] + [rng.randrange(0, i) for i in range(1, 16)]
    tree = torch.eye(16, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            tree[i] |= tree[p]
    tree_attend = torch.cat((torch.ones(16, context, dtype=torch.bool), tree), 1)
    depth = tree.sum(1) - 1

    def forward(rows: int, row_invariant: bool):
        tokens = torch.tensor([rng.randrange(3, spec.vocab_size) for _ in range(rows)])
        positions = context + (depth if rows == 16 else torch.zeros(1, dtype=torch.long))
        attend = tree_attend if rows == 16 else None

        def step(_):
            model.use_row_invariant(row_invariant)
            hidden = model(tokens, positions, attend, cache)
            cache.truncate(context)
            return hidden.cpu()  # the wire's copy to the host

        return step

    for numerics, flag in (("inv", True), ("fused", False)):
        yield f"stage-ar-{numerics}", lambda: None, forward(1, flag)
        yield f"stage-tree-{numerics}", lambda: None, forward(16, flag)
    # What the deterministic settings of a CUDA service cost: the same 16 rows with torch's defaults.
    yield "stage-tree-inv-nodet", lambda: None, nondeterministic(forward(16, True))


def nondeterministic(step: Callable[[object], object]) -> Callable[[object], object]:
    """``step`` with torch's deterministic algorithms off (as they were before a service's start)."""

    def run(state: object) -> object:
        was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(False)
        try:
            return step(state)
        finally:
            torch.use_deterministic_algorithms(was, warn_only=warn)

    return run


def verify_steps(base: Path, dtype: torch.dtype, device: torch.device, rng: random.Random):
    """The verifier's decision on a 16-row segment, as services/verifier/core.py makes it."""
    layers = load_model_spec(base).num_layers
    head = load_slice(base, (layers, layers), with_embedding=False, with_head=True, dtype=dtype, device=device)
    hidden = torch.randn(16, head.spec.hidden_size).to(dtype)  # arrives on the host, from the wire
    parents = [-1] + [rng.randrange(0, i) for i in range(1, 16)]
    tokens = [rng.randrange(3, head.spec.vocab_size) for _ in range(16)]

    def decide(row_invariant: bool):
        def step(_):
            head.use_row_invariant(row_invariant)
            best = head.greedy_tokens(hidden.to(head.device, head.dtype)).cpu()
            decision = accept_greedy_ids(tokens, parents, best.tolist())
            rows = list(decision.path)
            assert head.norm is not None
            return head.norm(hidden[rows].to(head.device, head.dtype)).cpu()  # features for the head drafter

        return step

    yield "verify-inv", lambda: None, decide(True)
    yield "verify-fused", lambda: None, decide(False)


def head_steps(head, context: int, rng: random.Random):
    """The head drafter: a verdict's pairs, a new round's tree, one level of growth."""
    spec = head.spec
    features = torch.randn(context + 3, spec.hidden_size)
    tokens = tuple(rng.randrange(3, spec.vocab_size) for _ in range(context + 3))

    def fresh(extra: int = 0) -> HeadTreeDrafter:
        drafter = HeadTreeDrafter(head)
        drafter.extend_context(FeaturePairs(features[:context], tokens[:context]))
        return drafter

    fill = TreeShape(nodes=24, depth=5, top_k=4)
    yield "head-extend", fresh, lambda d: d.extend_context(FeaturePairs(features[context:], tokens[context:]))
    yield "head-fill", fresh, lambda d: d.draft(tokens[context - 1], fill)

    def filled():
        drafter = fresh()
        return drafter, drafter.draft(tokens[context - 1], fill)

    yield "head-grow", filled, lambda s: s[0].grow_best(s[1], 4, 12, 4)


def load_drafting_head(base: Path, head_dir: str, dtype: torch.dtype, device: torch.device):
    """The head in ``head_dir``; "": the head shipped for the base, else a random one of the base's shape."""
    from common.speculation.heads import load_head
    from common.speculation.heads.model import new_head
    from common.speculation.heads.shipped import head_for_base

    path = Path(head_dir) if head_dir else head_for_base(base)
    if path is not None:
        return load_head(path, base, dtype=dtype, device=str(device)), str(path)
    head = new_head(base, intermediate_size=64, draft_ids=None, dtype=dtype, device=str(device))
    return head, "random head (none shipped for this base)"


def numerics_line(base: Path, dtype: torch.dtype, device: torch.device) -> str:
    """Which row-invariant numerics run here: the linear row blocks and the attention tile probed."""
    spec = load_model_spec(base)
    h, d = spec.hidden_size, spec.head_dim
    threads = torch.get_num_threads()
    shapes = {"q": (spec.num_heads * d, h), "mlp_up": (spec.intermediate_size, h), "lm_head": (spec.vocab_size, h)}
    blocks = {k: invariant.probe_row_blocks(o, i, dtype, str(device), threads) for k, (o, i) in shapes.items()}
    tile = invariant.probe_attention_tile(spec.num_heads // spec.num_kv_heads, spec.num_kv_heads, d, str(device),
                                          threads)
    parts = [f"{k} rows in blocks {b.smallest}-{b.largest}" for k, b in blocks.items()]
    return ("row-invariant numerics here: " + ", ".join(parts) + "; attention "
            + (f"blocked, tile {tile} rows" if tile else "one row at a time (no tile agreed)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="/root/models/qwen-coder-1.5b")
    parser.add_argument("--head", default="", help="head folder (default: the one shipped for the base)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random qwen2 base instead of --base (CPU check)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--context", type=int, default=256, help="committed tokens before each step")
    parser.add_argument("--top", type=int, default=8, help="top CPU ops shown per step")
    parser.add_argument("--only", default="", help="comma-separated step name prefixes (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    prepare_device(args.device)  # as a service does: a missing GPU refused, CUDA deterministic
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    base = Path(args.base)
    if args.tiny:
        from services.testbed.tiny_models import make_tiny_pair

        base, _ = make_tiny_pair(Path(tempfile.mkdtemp()), family="qwen2", seed=5)
    rng = random.Random(0)
    torch.manual_seed(0)
    head, head_name = load_drafting_head(base, args.head, dtype, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {args.dtype}, base {base.name}, "
          f"head {head_name}, context {args.context}, {args.steps} steps each, {torch.get_num_threads()} threads")
    print(numerics_line(base, dtype, device))
    wanted = tuple(p for p in args.only.split(",") if p)
    results = []
    with torch.no_grad():
        for name, setup, step in (*stage_steps(base, dtype, device, args.context, rng),
                                  *head_steps(head, args.context, rng), *verify_steps(base, dtype, device, rng)):
            if not wanted or name.startswith(wanted):
                results.append(measure(name, setup, step, args.steps, device, args.top))
    for r in results:
        print(f"\n{r.name}: top CPU ops per step (self ms, calls)")
        for op, ms, calls in r.top_ops:
            print(f"  {op[:60]:<60} {ms:8.3f} {calls:6.1f}")
    print(f"\n{'step':<22}{'wall ms':>9}{'CPU self ms':>13}{'CUDA self ms':>14}{'syncs':>7}{'copies':>8}"
          f"{'.item()':>9}{'nonzero':>9}")
    for r in results:
        print(f"{r.name:<22}{r.wall_ms:9.2f}{r.cpu_self_ms:13.2f}{r.cuda_self_ms:14.2f}{r.syncs:7.1f}"
              f"{r.copies:8.1f}{r.items:9.1f}{r.nonzeros:9.1f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
