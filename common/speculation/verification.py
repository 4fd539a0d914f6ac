"""Deciding which draft-tree nodes the base model accepts, and the token it emits next.

Vocabulary (as in vLLM's rejection sampler): *accepted* tokens are draft nodes the base model agrees
with; the *next* token is the one the base model emits after the last accepted node (the bonus token
when every candidate below it was rejected or none exists). Input is one verified segment whose row 0
is the tree root; rows are tree indices, so ``parents[i] < i`` and ``parents[0] == -1``.

Greedy (temperature 0): walk from the root while some child's token is the argmax; the result is
exactly the base model's greedy continuation.

Sampling (temperature > 0): every token is drawn from the base model's p at its position with a
uniform that depends only on the request's seed and that position (``position_uniform``, inverse CDF).
At a node whose token sits at position n, the base model's token for position n + 1 is that draw; a child
carrying it is accepted and the walk continues from it, else the draw is the next token. So each emitted
token is distributed exactly as p given the prefix, and with deterministic proposals (the draft is top-k, q a
point mass) a child is accepted with probability p(child), as in recursive rejection sampling (SpecInfer)
with the same acceptance rate, but the output no longer depends on the tree: for one seed, prompt and
temperature the tokens are those of the base model sampled alone, one token a step, with the same draws,
whatever the draft proposed, the mode, the other requests in flight or a restart in between. No draft
probability enters, so a draft that proposes from a reduced vocabulary (``common.speculation.draft_vocab``)
leaves the output exact too (tests/common/speculation/test_verification.py checks the distribution with a
chi-square; the ring tests check flowspec and chunk against ar token for token).
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


_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit words that scatters nearby inputs."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def position_uniform(seed: int, position: int) -> float:
    """A uniform in [0, 1) from the request's ``seed`` and the sampled token's absolute ``position`` only
    (counter-based: no generator state, so a draw never depends on how many came before it)."""
    word = _mix((_mix(seed & _MASK) + (position + 1) * 0x9E3779B97F4A7C15) & _MASK)
    return (word >> 11) / float(1 << 53)


def draw(p: torch.Tensor, u: float) -> int:
    """The token at which ``p``'s cumulative sum first exceeds ``u`` of its total (inverse CDF): distributed as
    ``p`` for a uniform ``u``, and never a token of probability 0."""
    cumulative = torch.cumsum(p, dim=-1)
    index = int(torch.searchsorted(cumulative, torch.tensor([u * float(cumulative[-1])], dtype=p.dtype), right=True))
    return min(index, p.shape[-1] - 1)


def sample_token(logits: torch.Tensor, temperature: float, seed: int, position: int) -> int:
    """The token at ``position`` from a logits row [vocab]: argmax at T=0, else the draw of
    softmax(logits/T) keyed by (``seed``, ``position``)."""
    if temperature <= 0:
        return int(logits.argmax())
    return draw(target_probs(logits, temperature), position_uniform(seed, position))


def accept_sampling(
    tokens: Sequence[int],
    parents: Sequence[int],
    logits: torch.Tensor,
    temperature: float,
    seed: int,
    root_position: int,
) -> Acceptance:
    """``root_position``: the absolute position of the root's token (row 0); a node at depth d chooses the
    token of position ``root_position + d + 1``."""
    assert temperature > 0 and parents and parents[0] == -1
    children = _children(parents)
    path = [0]
    while True:
        node = path[-1]
        token = sample_token(logits[node], temperature, seed, root_position + len(path))
        match = next((c for c in children.get(node, ()) if tokens[c] == token), None)
        if match is None:
            return Acceptance(tuple(path), token)
        path.append(match)
