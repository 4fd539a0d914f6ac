"""How often the ring's bf16 greedy output differs from the base model's own bf16 ``generate``.

The ring's greedy output in bf16 is the same in every mode and under every timing (row-invariant
numerics, tests/integration/test_bf16_ring.py): it is what our model slice gives when it prefills
in chunks of 64 and then decodes one row at a time, which this script computes directly. It first
checks, on the real model, that a chunked prefill gives bitwise the hidden states of one row at a
time (with ``--fused``, the kernels used before row invariance, it need not), then compares, prompt by prompt, our greedy tokens with transformers' bf16 ``generate``.

    python infra/bf16_divergence.py ~/.cache/flowring/models/smollm2-135m /work/shared/data/mt_bench.jsonl \
        --prompts 20 --new-tokens 64
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from common.models.modeling import causal_attend, encode_prompt, load_slice, load_tokenizer
from common.prompts import load_prompts

CHUNK = 64  # the scheduler's default prefill chunk


def ours(model, prompt: list[int], new_tokens: int, eos: tuple[int, ...]) -> list[int]:
    """Greedy tokens: prefill in chunks, then one row per step, stopping at EOS like the ring."""
    cache = model.new_cache()
    for start in range(0, len(prompt), CHUNK):
        rows = prompt[start : start + CHUNK]
        hidden = model(torch.tensor(rows), torch.arange(start, start + len(rows)), causal_attend(start, len(rows)),
                       cache)
    out: list[int] = []
    for position in range(len(prompt), len(prompt) + new_tokens):
        token = int(model.greedy_tokens(hidden[-1:])[0])
        out.append(token)
        if token in eos:
            break
        hidden = model(torch.tensor([token]), torch.tensor([position]), None, cache)
    return out


def theirs(model, prompt: list[int], new_tokens: int, eos: tuple[int, ...]) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                             eos_token_id=list(eos), pad_token_id=eos[0])
    return out[0, len(prompt):].tolist()


def chunked_equals_row_by_row(model, prompt: list[int]) -> bool:
    chunked, cache = [], model.new_cache()
    for start in range(0, len(prompt), CHUNK):
        rows = prompt[start : start + CHUNK]
        chunked.append(model(torch.tensor(rows), torch.arange(start, start + len(rows)),
                             causal_attend(start, len(rows)), cache))
    cache = model.new_cache()
    alone = [model(torch.tensor([t]), torch.tensor([i]), None, cache) for i, t in enumerate(prompt)]
    return torch.equal(torch.cat(chunked), torch.cat(alone))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("prompts", type=Path)
    parser.add_argument("--prompts", dest="count", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--fused", action="store_true", help="our slice with fused kernels (row_invariant off)")
    args = parser.parse_args()
    model_dir = args.model.expanduser()
    slice_ = load_slice(model_dir, None, with_embedding=True, with_head=True, dtype=torch.bfloat16,
                        row_invariant=not args.fused)
    eos = slice_.spec.eos_token_ids
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    tokenizer = load_tokenizer(model_dir)
    prompts = [encode_prompt(tokenizer, p.text, raw=p.raw) for p in load_prompts(args.prompts, args.count)]
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {model_dir.name}, bf16, "
          f"{'fused' if args.fused else 'row-invariant'} kernels")
    print(f"chunked prefill bitwise equal to one row at a time (first prompt, {len(prompts[0])} tokens): "
          f"{chunked_equals_row_by_row(slice_, prompts[0])}")
    differing, compared, agreed = 0, 0, 0
    for i, prompt in enumerate(prompts):
        a, b = ours(slice_, prompt, args.new_tokens, eos), theirs(reference, prompt, args.new_tokens, eos)
        same = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        if a != b:
            differing += 1
        compared += max(len(a), len(b))
        agreed += same
        print(f"prompt {i}: {len(prompt)} tokens, ours {len(a)} / generate {len(b)} new tokens, "
              f"{'identical' if a == b else f'first difference at new token {same}'}")
    print(f"{differing} of {len(prompts)} prompts differ from bf16 generate; {agreed} of {compared} new tokens "
          f"generated before the first difference")


if __name__ == "__main__":
    main()
