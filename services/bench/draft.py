"""What a draft model costs per tree level: its fill and growth forwards over a replayed decode.

No base model takes part: at every step the draft's own likeliest path is accepted, ``accept`` nodes
deep, and the likeliest child of the last one is the next token (the tree keeps its subtree), as when
base and draft agree. Every step grows ``grow_levels`` levels by best-first growth, one draft forward
each (``TreeDrafter.grow_best``); a new round starts with a fill draft. Configurations (kept tree rows
or not, full or reduced vocabulary) take their steps in turn, so machine noise hits them alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from common.models.modeling import ModelSlice
from common.speculation.draft_vocab import DraftLogits
from common.speculation.drafting import TreeDrafter, TreeShape
from common.speculation.modes import DraftSettings
from common.speculation.tree import DraftTree, plan_prune, prune_tree

DEFAULT_PROMPT = '''Review this Python module and add a function `top_words(path, n)` that returns the n most
common words of a text file, lower-cased, ignoring punctuation. Keep the style of the module.

```python
"""Small text utilities used by the report generator."""

from __future__ import annotations

import re
from pathlib import Path

WORD = re.compile(r"[A-Za-z']+")


def read_text(path: str | Path) -> str:
    """The whole file as text, decoded as UTF-8."""
    return Path(path).read_text(encoding="utf-8")


def words(text: str) -> list[str]:
    """Every word of ``text``, lower-cased, in order."""
    return [w.lower() for w in WORD.findall(text)]


def line_count(path: str | Path) -> int:
    """Number of lines in the file."""
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)
```'''


@dataclass(frozen=True)
class DraftConfig:
    label: str
    keep_tree_rows: bool
    draft_ids: torch.Tensor | None  # None: the full vocabulary


@dataclass(frozen=True)
class DraftTiming:
    label: str
    vocab: int  # tokens the draft proposes from
    grow_ms: list[float]  # every growth level (one draft forward each)
    grow_rows: float  # rows forwarded per growth level, on average
    fill_ms_per_level: list[float]  # every fill draft, divided by its depth
    tokens_per_step: float


@dataclass
class _Run:
    config: DraftConfig
    drafter: TreeDrafter
    root: int
    tree: DraftTree | None = None  # None: the next step starts a round
    pending: tuple[int, ...] = ()  # committed tokens the drafter has not taken yet, ending with the root
    grow_ms: list[float] = field(default_factory=list)
    grow_rows: int = 0
    fill_ms: list[float] = field(default_factory=list)
    tokens: int = 0


def profile_draft(model: ModelSlice, prompt: Sequence[int], configs: Sequence[DraftConfig], settings: DraftSettings,
                  steps: int, accept: int, warmup: int = 2) -> list[DraftTiming]:
    """Replay ``warmup + steps`` decode steps with every configuration; time the last ``steps``."""
    runs = []
    for config in configs:
        drafter = TreeDrafter(model, logits=DraftLogits(model, config.draft_ids), keep_tree_rows=config.keep_tree_rows)
        drafter.extend_context(prompt)
        runs.append(_Run(config, drafter, prompt[-1]))
    for step in range(warmup + steps):
        for run in runs:
            _step(run, settings, accept, timed=step >= warmup)
    return [
        DraftTiming(r.config.label, model.spec.vocab_size if r.config.draft_ids is None else len(r.config.draft_ids),
                    r.grow_ms, r.grow_rows / len(r.grow_ms), r.fill_ms, r.tokens / steps)
        for r in runs
    ]


def _step(run: _Run, settings: DraftSettings, accept: int, timed: bool) -> None:
    """One decode step: a fill if the round is new, ``grow_levels`` growths, then a verdict."""
    drafter = run.drafter
    if run.tree is None:
        started = time.perf_counter()
        drafter.extend_context(run.pending)
        run.tree = drafter.draft(run.root, TreeShape(settings.fill_nodes, settings.fill_depth, settings.top_k))
        if timed:
            run.fill_ms.append((time.perf_counter() - started) * 1e3 / settings.fill_depth)
        run.pending = ()
    for level in range(settings.grow_levels):
        started = time.perf_counter()
        rows = drafter.rows_forwarded
        run.tree = drafter.grow_best(run.tree, settings.expand_leaves, settings.expand_nodes, settings.top_k,
                                     run.pending if level == 0 else ())
        if timed:
            run.grow_ms.append((time.perf_counter() - started) * 1e3)
            run.grow_rows += drafter.rows_forwarded - rows
    path, next_token = _likeliest_path(run.tree, accept)
    keep = plan_prune(run.tree, path, next_token)
    run.pending = tuple(run.tree.tokens[i] for i in path[1:]) + (next_token,)
    run.root = next_token
    run.tree = prune_tree(run.tree, keep) if keep else None
    if timed:
        run.tokens += len(run.pending)


def _likeliest_path(tree: DraftTree, accept: int) -> tuple[list[int], int]:
    """The best-scoring child chain from the root, ``accept`` nodes deep at most, and the token after it."""
    children = tree.children()
    path = [0]
    while path[-1] in children and len(path) <= accept:
        path.append(max(children[path[-1]], key=lambda c: tree.scores[c]))
    below = children.get(path[-1])
    if below:
        return path, tree.tokens[max(below, key=lambda c: tree.scores[c])]
    return path, tree.tokens[path[-1]]  # a leaf: the round ends on a token the tree lacks below it
