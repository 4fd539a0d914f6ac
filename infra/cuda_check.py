"""Prove the CUDA path: the ring on a GPU with tiny random models, greedy-equal to HF generate there.

Usage (on a machine with an NVIDIA GPU): python infra/cuda_check.py [--prompts 20] [--stages 2]
Runs (1) every core in one process on cuda, (2) the real multi-process ring with --device cuda over
TCP loopback, and compares both token for token with the base model's own generate on the same GPU.
Prints one line per check and a timing summary; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.launcher import client_for, plan_local, start, stop  # noqa: E402
from services.testbed.local_ring import LocalRing  # noqa: E402
from services.testbed.tiny_models import make_perturbed_copy, make_tiny_pair  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    root = Path(tempfile.mkdtemp())
    base, _ = make_tiny_pair(root, family="qwen2", seed=5)
    draft = make_perturbed_copy(base, root / "near", noise=0.05, seed=1)
    reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to("cuda").eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 300) for _ in range(rng.randrange(2, 60))] for _ in range(args.prompts)]
    expected = []
    started = time.perf_counter()
    for prompt in prompts:
        ids = torch.tensor([prompt], device="cuda")
        with torch.no_grad():
            out = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=args.max_new_tokens, pad_token_id=2)
        expected.append(out[0, len(prompt):].tolist())
    hf_s = time.perf_counter() - started
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    failures = 0

    ring = LocalRing(base, draft, args.stages, device="cuda")
    started = time.perf_counter()
    tokens = steps = 0
    for prompt, want in zip(prompts, expected, strict=True):
        reply = ring.generate(prompt, args.max_new_tokens)
        ok = reply.ok and list(reply.token_ids) == want
        failures += not ok
        tokens += len(reply.token_ids)
        steps += reply.stats.get("steps", 0)
    local_s = time.perf_counter() - started
    print(f"in-process ring on cuda: {args.prompts - failures}/{args.prompts} prompts greedy-equal to generate")

    spec = plan_local(base, draft, args.stages, device="cuda")
    run_dir = root / "run"
    start(spec, run_dir)
    try:
        started = time.perf_counter()
        process_failures = 0
        with client_for(spec, 300) as client:
            for prompt, want in zip(prompts, expected, strict=True):
                reply = client.generate("", prompt_ids=tuple(prompt), max_new_tokens=args.max_new_tokens)
                process_failures += not (reply.ok and list(reply.token_ids) == want)
        process_s = time.perf_counter() - started
    finally:
        stop(run_dir)
    failures += process_failures
    print(f"process ring on cuda ({args.stages} stages, TCP loopback): "
          f"{args.prompts - process_failures}/{args.prompts} prompts greedy-equal to generate")
    print(f"timing for {args.prompts} prompts x {args.max_new_tokens} tokens: HF generate {hf_s:.2f} s, "
          f"in-process ring {local_s:.2f} s ({tokens / max(steps, 1):.2f} tokens/step), "
          f"process ring {process_s:.2f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
