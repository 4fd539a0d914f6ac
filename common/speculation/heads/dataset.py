"""A head's training prompts: the offline code corpus plus Magpie prose, each domain with a held-apart share.

Built once per run and fixed in ``prompts.json`` (a resumed run reads it back). Order: the held-apart
prompts of every domain first (answered first, never trained on), then the rest with the domains
alternating, so a generation phase cut short by its deadline still answers both. Every prompt is
checked against the benchmark prompts on this machine (``corpus.benchmark_texts``): code instructions
raise ``BenchmarkLeakError`` on an overlap, as before; Magpie requests that overlap are dropped and counted.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path

from common.speculation.heads.corpus import (
    benchmark_texts,
    check_excludes_benchmarks,
    code_instructions,
    prompts_from_file,
)
from common.speculation.heads.magpie import DOMAINS, STEERING, clean_requests, domain_of, generate_requests

PROMPTS_FILE = "prompts.json"


@dataclass(frozen=True)
class PromptPlan:
    """What to build: how many prompts of each source, held apart per domain, Magpie's sampling."""

    max_code: int
    max_prose: int  # Magpie requests generated (0: code only)
    held_out_per_domain: int
    prose_max_new_tokens: int = 128
    batch_size: int = 256
    seed: int = 0
    prompts_file: Path | None = None  # MT-bench style prompts instead of both sources
    prose_seconds: float = math.inf  # most time for sampling Magpie requests, from their first batch


@dataclass
class PromptSet:
    texts: list[str]
    domains: list[str]
    held_out: int  # the first ``held_out`` prompts are held apart
    recipe: dict = field(default_factory=dict)  # how the set was made, for config.json

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> PromptSet:
        body = json.loads(path.read_text(encoding="utf-8"))
        return cls(body["texts"], body["domains"], int(body["held_out"]), body.get("recipe", {}))


def build_prompts(plan: PromptPlan, generator, deadline: float, log: Callable[[str], None]) -> PromptSet:
    """The run's prompts; ``generator`` (``distill.Generator``, or None for code only) writes the prose
    for ``plan.prose_seconds`` at most, and never past ``deadline`` (``time.monotonic()``)."""
    benchmarks = benchmark_texts()
    if plan.prompts_file is not None:
        texts = prompts_from_file(plan.prompts_file)[: plan.max_code]
        check_excludes_benchmarks(texts, benchmarks)
        random.Random(plan.seed).shuffle(texts)
        by_domain = {d: [t for t in texts if domain_of(t) == d] for d in DOMAINS}
        return _assemble(by_domain, plan, {"source": str(plan.prompts_file), "domains": "by what each prompt asks"})
    code = code_instructions(plan.max_code, seed=plan.seed)
    check_excludes_benchmarks(code, benchmarks)
    prose: list[str] = []
    recipe: dict = {
        "code": f"{len(code)} instructions from docstrings and signatures of the standard library and installed "
                f"packages (common.speculation.heads.corpus, seed {plan.seed})",
        "benchmark_prompts_checked": len(benchmarks),
    }
    if plan.max_prose and generator is not None:
        started = time.monotonic()
        raw = generate_requests(
            generator.model, generator.tokenizer, plan.max_prose, batch_size=plan.batch_size,
            max_new_tokens=plan.prose_max_new_tokens, eos=generator.eos, pad=generator.pad, seed=plan.seed,
            deadline=min(started + plan.prose_seconds, deadline), on_batch=lambda n: log(f"magpie: {n} requests ({time.monotonic() - started:.0f} s)"),
        )
        requests, dropped = clean_requests(raw, benchmarks)
        code += [r.text for r in requests if r.domain == "code"]
        prose = [r.text for r in requests if r.domain == "prose"]
        log(f"magpie: {len(raw)} requests sampled, {len(requests)} kept ({len(prose)} prose), dropped {dropped}")
        recipe["prose"] = (
            f"Magpie: the base sampled {len(raw)} user requests (temperature 1, at most {plan.prose_max_new_tokens} "
            f"tokens) from its chat template's user-turn opening under {len(STEERING)} steering system lines; "
            f"kept {len(requests)} complete, distinct ones overlapping no benchmark prompt (dropped {dropped}); "
            f"those naming code count as code"
        )
    rng = random.Random(plan.seed)
    rng.shuffle(code)
    rng.shuffle(prose)
    return _assemble({"code": code, "prose": prose}, plan, recipe)


def _assemble(by_domain: dict[str, list[str]], plan: PromptPlan, recipe: dict) -> PromptSet:
    """Held-apart prompts of each domain first, then the rest alternating between domains."""
    seen: set[str] = set()
    unique: dict[str, list[str]] = {}
    for d, texts in by_domain.items():  # a text counts once, in the first domain that has it
        unique[d] = [t for t in dict.fromkeys(texts) if t not in seen]
        seen.update(unique[d])
    held = {d: texts[: min(plan.held_out_per_domain, len(texts) // 2)] for d, texts in unique.items() if texts}
    unique = {d: texts for d, texts in unique.items() if texts}
    texts, domains = [], []
    for d, rows in held.items():
        texts += rows
        domains += [d] * len(rows)
    rest = [[(d, t) for t in unique[d][len(held[d]) :]] for d in unique]
    for group in zip_longest(*rest):
        for item in group:
            if item is not None:
                domains.append(item[0])
                texts.append(item[1])
    counts = {d: sum(1 for x in domains if x == d) for d in unique}
    recipe = recipe | {"prompts_per_domain": counts, "held_apart_per_domain": {d: len(h) for d, h in held.items()},
                       "deduplicated": "exact text across both sources; Magpie requests also by their words"}
    return PromptSet(texts, domains, sum(len(h) for h in held.values()), recipe)
