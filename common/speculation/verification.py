"""Deciding which draft-tree nodes the base model accepts, and the token it emits next.

Vocabulary (as in vLLM's rejection sampler): *accepted* tokens are draft nodes the base model agrees
with; the *next* token is the one the base model emits after the last accepted node (the bonus token
when every candidate below it was rejected or none exists). Input is one verified segment whose row 0
is the tree root; rows are tree indices, so ``parents[i] < i`` and ``parents[0] == -1``.

Greedy (temperature 0): walk from the root while some child's token is the argmax; the result is
exactly the base model's greedy continuation.

Sampling (temperature > 0): recursive rejection sampling with deterministic proposals (the draft is
top-k, so q is a point mass): at a node with target distribution p, try its children in order; child
x is accepted with probability p(x); on rejection p(x) is set to 0 and p renormalised. If a child is
accepted, continue from it; otherwise the next token is drawn from the residual p. Every emitted token
is therefore distributed exactly as the base model's p given the prefix. No draft probability enters,
so a draft that proposes from a reduced vocabulary (``common.speculation.draft_vocab``) leaves the output
distribution exact too (tests/integration/test_ring_behaviour.py checks both with a chi-square).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Acceptance:
    path: tuple[int, ...]  # accepted rows, root first
    next_token: int


def _children(parents: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        if i and p >= 0:
            out.setdefault(p, []).append(i)
    return out


def accept_greedy(tokens: Sequence[int], parents: Sequence[int], logits: torch.Tensor) -> Acceptance:
    """``logits`` [rows, vocab]: the base model's next-token logits at every row."""
    return accept_greedy_ids(tokens, parents, logits.argmax(dim=-1).tolist())


def accept_greedy_ids(tokens: Sequence[int], parents: Sequence[int], best: Sequence[int]) -> Acceptance:
    """``best`` [rows]: the base model's argmax next token at every row."""
    assert parents and parents[0] == -1, "row 0 must be the root"
    children = _children(parents)
    path = [0]
    while True:
        node = path[-1]
        match = next((c for c in children.get(node, ()) if tokens[c] == best[node]), None)
        if match is None:
            return Acceptance(tuple(path), int(best[node]))
        path.append(match)


def target_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Base-model distribution at temperature T, in float64 so residuals stay exact enough."""
    return torch.softmax(logits.double() / temperature, dim=-1)


def sample_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """One token from a logits row [vocab]: argmax at T=0, else a draw from softmax(logits/T)."""
    if temperature <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(target_probs(logits, temperature), 1, generator=generator))


def accept_sampling(
    tokens: Sequence[int],
    parents: Sequence[int],
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
) -> Acceptance:
    assert temperature > 0 and parents and parents[0] == -1
    children = _children(parents)
    path = [0]
    while True:
        node = path[-1]
        p = target_probs(logits[node], temperature)  # [vocab]
        accepted = None
        for child in children.get(node, ()):
            token = tokens[child]
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            if u < float(p[token]):
                accepted = child
                break
            p[token] = 0.0  # rejected: remove it and renormalise the rest (the residual)
            p /= p.sum()
        if accepted is None:
            return Acceptance(tuple(path), int(torch.multinomial(p, 1, generator=generator)))
        path.append(accepted)
