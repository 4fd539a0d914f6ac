"""Prose prompts the base writes itself (Magpie): the user-turn opening, sampling, cleaning, and the prompt set."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from common.speculation.heads import dataset
from common.speculation.heads.corpus import BenchmarkGuard, BenchmarkLeakError, benchmark_texts
from common.speculation.heads.dataset import PromptPlan, build_prompts
from common.speculation.heads.distill import GenerationSettings, load_generator
from common.speculation.heads.magpie import (
    MagpieError,
    clean_requests,
    domain_of,
    generate_requests,
    user_turn_opening,
)
from tests.support.tiny_models import make_tiny_tokenizer

MT_BENCH_LIKE = "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences."


def test_the_opening_is_the_template_up_to_the_users_words() -> None:
    tokenizer = make_tiny_tokenizer()
    assert user_turn_opening(tokenizer) == "<s>user\n"
    assert user_turn_opening(tokenizer, "Be brief.") == "<s>system\nBe brief.</s>\n<s>user\n"
    tokenizer.chat_template = None
    with pytest.raises(MagpieError, match="no chat template"):
        user_turn_opening(tokenizer)


def test_the_tiny_base_writes_requests_from_the_opening_alone(tiny_base: Path) -> None:
    g = load_generator(tiny_base, GenerationSettings("cpu", 16, 24, torch.float32))
    past = time.monotonic()  # one batch only
    requests = generate_requests(g.model, g.tokenizer, 32, batch_size=32, max_new_tokens=32, eos=g.eos, pad=g.pad,
                                 seed=1, deadline=past)
    again = generate_requests(g.model, g.tokenizer, 32, batch_size=32, max_new_tokens=32, eos=g.eos, pad=g.pad,
                              seed=1, deadline=past)
    assert requests == again  # seeded: a resumed or repeated run writes the same requests
    assert 0 < len(requests) < 32  # rows cut off before their end token are dropped
    assert all(isinstance(r, str) and "</s>" not in r and "<s>" not in r for r in requests)


def test_cleaning_drops_short_duplicate_and_benchmark_requests_and_labels_domains() -> None:
    texts = [
        "Tell me about the history of the Silk Road and its trade goods.",
        "tell me about the HISTORY of the silk road, and its trade goods!",  # the same words
        "Hi",  # too short
        "Write a Python function that merges two sorted lists.",
        "Please " + MT_BENCH_LIKE.lower(),  # contains a benchmark prompt
        "Compose an engaging travel blog post about a recent trip to Hawaii highlighting cultural experiences and food",
    ]
    kept, dropped = clean_requests(texts, [MT_BENCH_LIKE])
    assert [r.text for r in kept] == [texts[0], texts[3]]
    assert [r.domain for r in kept] == ["prose", "code"]
    assert dropped == {"length": 1, "duplicate": 1, "benchmark": 2}
    assert domain_of("Explain how a SQL join works") == "code" and domain_of("Write a haiku about rain") == "prose"


def test_the_guard_finds_overlaps_both_ways_and_near_copies() -> None:
    guard = BenchmarkGuard([MT_BENCH_LIKE, "short one"])
    assert guard.overlaps("Sure! " + MT_BENCH_LIKE + " Thanks.")
    assert guard.overlaps("a recent trip to Hawaii, highlighting cultural")
    assert guard.overlaps("Compose an engaging blog post about a recent trip to Hawaii highlighting cultural experiences")
    assert not guard.overlaps("Compose a poem about a trip to the mountains in winter")


def test_benchmark_files_count_as_benchmarks(tmp_path: Path, monkeypatch) -> None:
    bench = tmp_path / "mine.jsonl"
    bench.write_text(json.dumps({"question_id": 1, "turns": ["Describe a lighthouse keeper's day in detail.",
                                                             "Now as a poem."]}) + "\n")
    monkeypatch.setenv("FLOWRING_BENCHMARKS", str(bench))
    assert {"Describe a lighthouse keeper's day in detail.", "Now as a poem."} <= set(benchmark_texts())


def test_the_prompt_set_holds_apart_each_domain_first_then_alternates(monkeypatch) -> None:
    code = [f"Write a Python function `f{i}(x)`. It should do this: return x plus {i}." for i in range(10)]
    prose = [f"Write a short story number {i} about a fox who learns to sail." for i in range(6)]
    monkeypatch.setattr(dataset, "code_instructions", lambda limit, seed: code[:limit])
    monkeypatch.setattr(dataset, "benchmark_texts", lambda: [MT_BENCH_LIKE])
    monkeypatch.setattr(dataset, "generate_requests", lambda *a, **k: [*prose, prose[0], MT_BENCH_LIKE])
    g = SimpleNamespace(model=None, tokenizer=None, eos=[2], pad=2)
    prompts = build_prompts(PromptPlan(max_code=10, max_prose=8, held_out_per_domain=2), g, time.monotonic(), print)
    assert prompts.held_out == 4 and prompts.domains[:4] == ["code", "code", "prose", "prose"]
    assert prompts.domains[4:8] == ["code", "prose", "code", "prose"] and prompts.domains.count("prose") == 6
    assert sorted(prompts.texts) == sorted(code + prose)  # the duplicate and the benchmark copy are gone
    assert prompts.recipe["held_apart_per_domain"] == {"code": 2, "prose": 2}
    assert "Magpie" in prompts.recipe["prose"]


def test_a_code_instruction_that_overlaps_a_benchmark_stops_the_run(monkeypatch) -> None:
    monkeypatch.setattr(dataset, "code_instructions", lambda limit, seed: ["Please: " + MT_BENCH_LIKE])
    monkeypatch.setattr(dataset, "benchmark_texts", lambda: [MT_BENCH_LIKE])
    with pytest.raises(BenchmarkLeakError):
        build_prompts(PromptPlan(max_code=5, max_prose=0, held_out_per_domain=1), None, time.monotonic(), print)


class _SlowModel(torch.nn.Module):
    """Writes one token and the end token per row; each batch advances a fake clock by its duration."""

    def __init__(self, clock: list[float], seconds: list[float], eos: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.clock, self.seconds, self.eos, self.batches = clock, seconds, eos, 0

    def generate(self, input_ids, **_) -> torch.Tensor:
        self.clock[0] += self.seconds[min(self.batches, len(self.seconds) - 1)]
        self.batches += 1
        n = input_ids.shape[0]
        return torch.cat((input_ids, torch.full((n, 1), 70 + self.batches), torch.full((n, 1), self.eos)), dim=1)


def test_a_batch_starts_only_if_one_as_slow_as_the_slowest_ends_by_the_deadline(monkeypatch) -> None:
    from common.speculation.heads import magpie

    clock = [0.0]
    monkeypatch.setattr(magpie.time, "monotonic", lambda: clock[0])
    tokenizer = make_tiny_tokenizer()
    eos = tokenizer.eos_token_id
    model = _SlowModel(clock, [4.0, 1.0, 1.0], eos)  # a slow first batch, then fast ones
    out = generate_requests(model, tokenizer, 100, batch_size=2, max_new_tokens=4, eos=[eos], pad=eos, seed=0,
                            deadline=10.0)
    # after 4 and 5 s a batch as slow as the slowest (4 s) still ends before 10 s; after 6 s it would not
    assert model.batches == 3 and len(out) == 6 and clock[0] == 6.0
