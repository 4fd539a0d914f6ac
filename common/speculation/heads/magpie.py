"""Prose prompts without benchmark data (the Magpie recipe): the base model writes user requests itself.

Given only its chat template's opening of a user turn (the system turn, then the user's header), the
base continues with what a user would ask, up to its end-of-turn token. Sampling (temperature 1) makes
the requests vary; a system line per batch steers them toward a family of topics (``STEERING``: written
for this project, none taken from a benchmark). ``clean_requests`` keeps complete requests of readable
length, drops duplicates (same words, any case or punctuation) and every request that overlaps a
benchmark prompt, and labels each one code or prose by what it asks for.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from common.speculation.heads.corpus import BenchmarkGuard, words

SENTINEL = "\u2063FLOWRING-USER-TURN\u2063"
STEERING = (
    "",  # the template's own default system turn
    "You are a helpful assistant for creative writing: stories, poems, letters, speeches and slogans.",
    "You are a knowledgeable assistant who explains history, science, economics, law and culture.",
    "You are a careful assistant for reasoning, planning, estimates and decisions.",
    "You are an assistant for everyday life: travel, health, cooking, money, work and relationships.",
    "You are an editor who rewrites, shortens, summarizes and critiques texts.",
    "You are a patient tutor who explains mathematics and physics step by step.",
    "You are an assistant who plays characters and holds conversations in many styles.",
)
MIN_CHARS, MAX_CHARS = 16, 1200
MAX_BATCHES_PER_COUNT = 3  # a base that rarely ends its turn stops costing time here
CODE_WORDS = re.compile(
    r"```|\bdef |\bclass |\bfunctions?\b|\bcode\b|\bprogram|\bpython\b|\bjava(script)?\b|c\+\+|\bsql\b|\bhtml\b"
    r"|\bcss\b|\bregex|\balgorithm|\bscript\b|\bapi\b|\bcompil|\bdebug|\bbash\b|\brust\b|\bgolang\b|\btypescript\b",
    re.IGNORECASE,
)
DOMAINS = ("code", "prose")


class MagpieError(ValueError):
    """A base model whose tokenizer has no chat template to open a user turn with."""


@dataclass(frozen=True)
class Request:
    text: str
    domain: str  # "code" or "prose"


def user_turn_opening(tokenizer, system: str = "") -> str:
    """The chat template's text before a user's words: what the base continues with a request."""
    if not getattr(tokenizer, "chat_template", None):
        raise MagpieError("the base's tokenizer has no chat template: Magpie prompts need one")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if SENTINEL not in text:
        raise MagpieError("the chat template drops the user's words: no user-turn opening to continue")
    return text[: text.index(SENTINEL)]


@torch.no_grad()
def generate_requests(
    model,
    tokenizer,
    count: int,
    *,
    batch_size: int,
    max_new_tokens: int,
    eos: Sequence[int],
    pad: int,
    seed: int,
    deadline: float,
    on_batch: Callable[[int], None] = lambda _: None,
) -> list[str]:
    """Up to ``count`` raw requests, sampled in batches (one steering line per batch) while a batch as slow
    as the slowest so far still ends by ``deadline`` (at least one batch, at most ``MAX_BATCHES_PER_COUNT``
    times the batches ``count`` needs).

    A request is the decoded continuation up to the first end token; one cut off by ``max_new_tokens``
    is dropped (it is not what a user would have sent).
    """
    out: list[str] = []
    device = next(model.parameters()).device
    batch, most = 0, MAX_BATCHES_PER_COUNT * -(-count // batch_size)
    longest = 0.0  # the slowest batch so far: another starts only if one as slow still ends by the deadline
    while len(out) < count and batch < most and (batch == 0 or time.monotonic() + longest < deadline):
        started = time.monotonic()
        opening = user_turn_opening(tokenizer, STEERING[batch % len(STEERING)])
        ids = tokenizer(opening, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        n = min(batch_size, count - len(out))
        torch.manual_seed(seed * 1_000_003 + batch)
        rows = model.generate(
            input_ids=ids.repeat(n, 1), attention_mask=torch.ones_like(ids).repeat(n, 1), do_sample=True,
            temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=list(eos),
        )[:, ids.shape[1] :]
        for row in rows.tolist():
            ends = [i for i, t in enumerate(row) if t in eos]
            if ends:
                out.append(tokenizer.decode(row[: ends[0]], skip_special_tokens=True))
        batch += 1
        longest = max(longest, time.monotonic() - started)
        on_batch(len(out))
    return out


def clean_requests(texts: Sequence[str], benchmarks: Sequence[str]) -> tuple[list[Request], dict[str, int]]:
    """Readable, distinct requests that overlap no benchmark prompt, labelled; and how many each rule dropped."""
    guard = BenchmarkGuard(benchmarks)
    seen: set[tuple[str, ...]] = set()
    kept: list[Request] = []
    dropped = {"length": 0, "duplicate": 0, "benchmark": 0}
    for raw in texts:
        text = raw.strip()
        if not MIN_CHARS <= len(text) <= MAX_CHARS:
            dropped["length"] += 1
            continue
        key = tuple(words(text))
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        if guard.overlaps(text):
            dropped["benchmark"] += 1
            continue
        kept.append(Request(text, domain_of(text)))
    return kept, dropped


def domain_of(text: str) -> str:
    return "code" if CODE_WORDS.search(text) else "prose"
