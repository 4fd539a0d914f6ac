"""The base model alone, through Hugging Face transformers: the ground truth for losslessness."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


@lru_cache(maxsize=4)
def _model(path: str):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def greedy_reference(base: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    """New tokens of ``generate(do_sample=False)``, stopping at EOS like the ring does."""
    model = _model(str(base))
    ids = torch.tensor([prompt])
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=eos if isinstance(eos, int) else eos[0])
    return out[0, len(prompt):].tolist()


def long_running_prompt(base: Path, min_new_tokens: int = 64) -> list[int]:
    """A prompt whose greedy output runs at least ``min_new_tokens`` without EOS (for cancel tests)."""
    for first in range(3, 300):
        prompt = [first, first + 1, first + 2]
        if len(greedy_reference(base, prompt, min_new_tokens)) == min_new_tokens:
            return prompt
    raise AssertionError("no prompt of this model runs that long without EOS")
