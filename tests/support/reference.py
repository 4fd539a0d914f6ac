"""The base model alone, through Hugging Face transformers: the ground truth for losslessness."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

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


def random_prompts(seed: int, prompts: int, longest: int) -> list[list[int]]:
    """``prompts`` random prompts of 1 to ``longest`` - 1 token ids."""
    rng = random.Random(seed)
    return [[rng.randrange(3, 300) for _ in range(rng.randrange(1, longest))] for _ in range(prompts)]


def assert_greedy_on_random_prompts(client: Any, base: Path, *, seed: int, prompts: int, longest: int,
                                    max_new_tokens: int) -> list[Any]:
    """Send ``prompts`` random prompts (1 to ``longest`` - 1 token ids) through ``client``; assert each reply is ok
    and equal to the base model's greedy output. Returns the replies."""
    replies = []
    for prompt in random_prompts(seed, prompts, longest):
        reply = client.generate("", prompt_ids=tuple(prompt), max_new_tokens=max_new_tokens)
        assert reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, prompt, max_new_tokens), prompt
        replies.append(reply)
    return replies


def assert_greedy_on_random_prompts_concurrently(connect: Callable[[], Any], base: Path, *, seed: int, prompts: int,
                                                 longest: int, max_new_tokens: int, clients: int) -> list[Any]:
    """As :func:`assert_greedy_on_random_prompts` (the same prompts), the first one alone and the rest from
    ``clients`` clients at once, each its own connection (``connect()``) sending its share back to back: every
    reply equal to the base model's greedy output of its own prompt. Returns the replies in prompt order."""
    asked = random_prompts(seed, prompts, longest)
    with connect() as client:
        first = assert_greedy_on_random_prompts(client, base, seed=seed, prompts=1, longest=longest,
                                                max_new_tokens=max_new_tokens)
    replies: dict[int, Any] = {0: first[0]}

    def send(share: list[int]) -> None:
        with connect() as client:
            for i in share:
                replies[i] = client.generate("", prompt_ids=tuple(asked[i]), max_new_tokens=max_new_tokens)

    rest = list(range(1, prompts))
    with ThreadPoolExecutor(clients) as pool:
        for done in [pool.submit(send, rest[c::clients]) for c in range(clients)]:
            done.result()
    assert sorted(replies) == list(range(prompts))
    for i, prompt in enumerate(asked):
        assert replies[i].ok, (prompt, replies[i].error)
        assert list(replies[i].token_ids) == greedy_reference(base, prompt, max_new_tokens), prompt
    return [replies[i] for i in range(prompts)]
