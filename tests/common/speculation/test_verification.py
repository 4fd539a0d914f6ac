"""Acceptance: greedy walks the argmax exactly; sampling emits the base model's own (seed, position) draws,
distributed as softmax (chi-square) whatever the tree."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare, kstest

from common.speculation.tree import DraftTree
from common.speculation.verification import (
    Acceptance,
    accept_greedy,
    accept_sampling,
    draw,
    position_uniform,
    sample_token,
    target_probs,
)
from tests.common.speculation.strategies import trees

VOCAB = 6


@st.composite
def greedy_cases(draw: st.DrawFn):
    """A tree and logits whose argmax is, at most nodes, one of the node's child tokens."""
    tree = draw(trees(max_nodes=25, vocab=VOCAB, score_ordered=draw(st.booleans())))
    kids = tree.children()
    seed = draw(st.integers(0, 2**31 - 1))
    logits = torch.randn(len(tree), VOCAB, generator=torch.Generator().manual_seed(seed))
    for node in range(len(tree)):
        options = [tree.tokens[c] for c in kids.get(node, [])]
        if options and draw(st.integers(0, 3)):
            best = draw(st.sampled_from(options))
        else:
            best = draw(st.integers(0, VOCAB - 1))
        logits[node, best] = logits[node].max() + 1.0 + draw(st.floats(0, 3))
    return tree, logits


@settings(max_examples=200, deadline=None)
@given(greedy_cases())
def test_greedy_follows_the_argmax(case) -> None:
    tree, logits = case
    result = accept_greedy(tree.tokens, tree.parents, logits)
    best = logits.argmax(dim=-1).tolist()
    path = result.path
    assert path[0] == 0
    for a, b in zip(path, path[1:], strict=False):
        assert tree.parents[b] == a
        assert tree.tokens[b] == best[a]
    last = path[-1]
    assert result.next_token == best[last]
    assert all(tree.tokens[c] != best[last] for c in tree.children().get(last, [])), "stops at first miss"


def test_greedy_table() -> None:
    #   0:[9] -> 1:[1], 2:[2];  1 -> 3:[3], 4:[4];  2 -> 5:[3];  3 -> 6:[0]
    tree = DraftTree((9, 1, 2, 3, 4, 3, 0), (-1, 0, 0, 1, 1, 2, 3), (0.0,) * 7)

    def logits(argmaxes: Sequence[int]) -> torch.Tensor:
        out = torch.zeros(len(argmaxes), 5)
        for i, a in enumerate(argmaxes):
            out[i, a] = 1.0
        return out

    run = lambda am: accept_greedy(tree.tokens, tree.parents, logits(am))  # noqa: E731
    assert run([1, 3, 0, 0, 0, 0, 2]) == Acceptance((0, 1, 3, 6), 2)
    assert run([2, 3, 3, 0, 0, 4, 0]) == Acceptance((0, 2, 5), 4)
    assert run([0, 3, 3, 0, 0, 4, 0]) == Acceptance((0,), 0), "root argmax matches no child"
    assert run([1, 4, 3, 0, 3, 4, 0]) == Acceptance((0, 1, 4), 3), "leaf: next token is its argmax"
    assert run([1, 2, 3, 0, 3, 4, 0]) == Acceptance((0, 1), 2), "token 2 exists, but not under node 1"
    single = accept_greedy((4,), (-1,), torch.tensor([[0.0, 0.0, 5.0]]))
    assert single == Acceptance((0,), 2)


def test_greedy_ignores_rows_outside_the_segment_tree() -> None:
    """A truncated segment: candidates exist only for rows present; later nodes simply aren't there."""
    tokens, parents = (5, 1, 2), (-1, 0, 0)
    logits = torch.tensor([[0.0, 0.0, 3.0, 0.0], [9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 7.0]])
    assert accept_greedy(tokens, parents, logits) == Acceptance((0, 2), 3)


# ----------------------------------------------------------------------------------------- sampling
# A fixed tree over a 5-token vocabulary: root with three children, grandchildren under two of them.
#   0:[4] -> 1:[0], 2:[1], 3:[2];  1 -> 4:[0], 5:[3];  2 -> 6:[2];  4 -> 7:[1]
S_TOKENS = (4, 0, 1, 2, 0, 3, 2, 1)
S_PARENTS = (-1, 0, 0, 0, 1, 1, 2, 4)
S_VOCAB = 5
DRAWS = 20000


def s_logits() -> torch.Tensor:
    return torch.randn(len(S_TOKENS), S_VOCAB, generator=torch.Generator().manual_seed(1234)) * 0.8


Sampler = Callable[[Sequence[int], Sequence[int], torch.Tensor, float, int, int], Acceptance]


def emitted(tokens: Sequence[int], result: Acceptance) -> list[int]:
    """Output tokens of one verification: the accepted drafts after the root, then the next token."""
    return [tokens[i] for i in result.path[1:]] + [result.next_token]


def draw_many(sampler: Sampler, temperature: float, seed: int) -> list[tuple[list[int], Acceptance]]:
    """``DRAWS`` verifications of the fixed tree, each as a request of its own seed would make it."""
    logits = s_logits()
    out = []
    for i in range(DRAWS):
        result = sampler(S_TOKENS, S_PARENTS, logits, temperature, seed + i, 0)
        out.append((emitted(S_TOKENS, result), result))
    return out


def chi2_p(counts: Counter, probs: torch.Tensor) -> float:
    total = sum(counts.values())
    assert total > 0
    observed = [counts.get(t, 0) for t in range(len(probs))]
    expected = (probs * total).tolist()
    expected[-1] += total - sum(expected)  # exact float sum for scipy
    assert min(expected) >= 5, "the setup must give every cell a usable expected count"
    return float(chisquare(observed, expected).pvalue)


def first_token_p(samples, temperature: float) -> float:
    counts = Counter(out[0] for out, _ in samples)
    return chi2_p(counts, target_probs(s_logits()[0], temperature))


def second_token_p(samples, temperature: float, child: int) -> float:
    counts = Counter(out[1] for out, res in samples if len(res.path) > 1 and res.path[1] == child)
    return chi2_p(counts, target_probs(s_logits()[child], temperature))


def kids_of(parents: Sequence[int], node: int) -> list[int]:
    return [i for i in range(1, len(parents)) if parents[i] == node]


def always_first_child(tokens, parents, logits, temperature, seed, root_position) -> Acceptance:
    """A WRONG sampler: accept the first child at every level, then sample from the full p."""
    return descend_first_children(parents, logits, temperature, seed, root_position, [0])


def descend_first_children(parents, logits, temperature, seed, root_position, path: list[int]) -> Acceptance:
    while True:
        kids = kids_of(parents, path[-1])
        if not kids:
            return Acceptance(tuple(path), sample_token(logits[path[-1]], temperature, seed, root_position + len(path)))
        path.append(kids[0])


def fresh_draw_on_a_miss(tokens, parents, logits, temperature, seed, root_position) -> Acceptance:
    """A subtly WRONG sampler: accepts the child matching the draw, but when none matches emits a fresh
    draw from the full p (another key) instead of the draw itself, so child tokens come out too often."""
    path = [0]
    while True:
        position = root_position + len(path)
        token = sample_token(logits[path[-1]], temperature, seed, position)
        match = next((c for c in kids_of(parents, path[-1]) if tokens[c] == token), None)
        if match is None:
            return Acceptance(tuple(path), sample_token(logits[path[-1]], temperature, seed, position + 10**6))
        path.append(match)


def first_child_below_root(tokens, parents, logits, temperature, seed, root_position) -> Acceptance:
    """A WRONG sampler that is right at the root: below it, always accepts the first child."""
    token = sample_token(logits[0], temperature, seed, root_position + 1)
    match = next((c for c in kids_of(parents, 0) if tokens[c] == token), None)
    if match is None:
        return Acceptance((0,), token)
    return descend_first_children(parents, logits, temperature, seed, root_position, [0, match])


@pytest.fixture(scope="module", params=[1.0, 0.7])
def sampled(request):
    temperature = request.param
    return temperature, draw_many(accept_sampling, temperature, seed=20240601)


def test_sampling_first_token_is_target_distributed(sampled) -> None:
    temperature, samples = sampled
    assert first_token_p(samples, temperature) > 1e-3


@pytest.mark.parametrize("child", [1, 2, 3])
def test_sampling_second_token_given_first_child(sampled, child: int) -> None:
    """Child 1 has two children of its own, 2 has one, 3 is a leaf (a plain draw)."""
    temperature, samples = sampled
    assert second_token_p(samples, temperature, child) > 1e-3


def test_sampling_second_token_given_residual(sampled) -> None:
    """When no root child is accepted, the next token is p restricted to non-child tokens."""
    temperature, samples = sampled
    p = target_probs(s_logits()[0], temperature).clone()
    for token in (0, 1, 2):
        p[token] = 0.0
    p /= p.sum()
    counts = Counter(out[0] for out, res in samples if len(res.path) == 1)
    assert set(counts) <= {3, 4}
    observed = [counts.get(3, 0), counts.get(4, 0)]
    total = sum(observed)
    assert chisquare(observed, [total * float(p[3]), total * float(p[4])]).pvalue > 1e-3


def test_a_child_is_accepted_with_its_probability(sampled) -> None:
    """The acceptance rate of recursive rejection sampling with point-mass proposals: p(child)."""
    temperature, samples = sampled
    p = target_probs(s_logits()[0], temperature)
    accepted = Counter(res.path[1] for _, res in samples if len(res.path) > 1)
    for child in (1, 2, 3):
        expected = float(p[S_TOKENS[child]]) * DRAWS
        assert abs(accepted[child] - expected) < 5 * (expected * (1 - expected / DRAWS)) ** 0.5


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_negative_control_always_first_child(temperature: float) -> None:
    samples = draw_many(always_first_child, temperature, seed=20240601)
    assert first_token_p(samples, temperature) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_negative_control_fresh_draw_on_a_miss(temperature: float) -> None:
    samples = draw_many(fresh_draw_on_a_miss, temperature, seed=20240601)
    assert first_token_p(samples, temperature) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_negative_control_wrong_below_root(temperature: float) -> None:
    """The conditional test has power too: a sampler right at the root but wrong below it."""
    samples = draw_many(first_child_below_root, temperature, seed=20240601)
    assert first_token_p(samples, temperature) > 1e-3
    assert second_token_p(samples, temperature, 1) < 1e-6


@settings(max_examples=100, deadline=None)
@given(trees(max_nodes=20, vocab=VOCAB), st.integers(0, 2**63 - 1), st.integers(0, 4096),
       st.sampled_from([0.3, 0.7, 1.0, 2.0]))
def test_the_output_is_the_base_models_own_draws_whatever_the_tree(tree, seed, root, temperature) -> None:
    """Every emitted token is the (seed, position) draw of p at its node: the tokens a one-token-a-step
    sampler with the same seed would emit, so the draft tree changes how many come per step, never which."""
    logits = torch.randn(len(tree), VOCAB, generator=torch.Generator().manual_seed(seed % 2**31)) * 2
    result = accept_sampling(tree.tokens, tree.parents, logits, temperature, seed, root)
    assert result.path[0] == 0
    assert all(tree.parents[b] == a for a, b in zip(result.path, result.path[1:], strict=False))
    out = emitted(tree.tokens, result)
    assert out == [sample_token(logits[node], temperature, seed, root + 1 + d) for d, node in enumerate(result.path)]
    rejected = {tree.tokens[c] for c in tree.children().get(result.path[-1], [])}
    assert result.next_token not in rejected
    alone = accept_sampling(tree.tokens[:1], tree.parents[:1], logits[:1], temperature, seed, root)
    assert alone.next_token == out[0]  # the root alone (ar) draws the same first token


def test_sampling_with_a_certain_child_always_accepts_it() -> None:
    tokens, parents = (0, 2, 1), (-1, 0, 0)
    logits = torch.full((3, 4), -1e4)
    logits[0, 1] = 0.0  # p(1) = 1 exactly at the root
    for seed in range(200):
        result = accept_sampling(tokens, parents, logits, 1.0, seed, 7)
        assert result.path == (0, 2)


# -------------------------------------------------------------------------------------- determinism
def test_sampling_is_deterministic_per_seed_and_position() -> None:
    logits = s_logits()

    def run(seed: int, shift: int = 0) -> list[Acceptance]:
        return [accept_sampling(S_TOKENS, S_PARENTS, logits, 0.8, seed, root + shift) for root in range(200)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(7) != run(7, shift=1)


def test_position_uniforms_are_uniform_and_independent_of_each_other() -> None:
    us = [position_uniform(seed, position) for seed in range(40) for position in range(500)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert kstest(us, "uniform").pvalue > 1e-3
    pairs = Counter((int(a * 4), int(b * 4)) for a, b in zip(us[::2], us[1::2], strict=True))
    assert chisquare([pairs.get((i, j), 0) for i in range(4) for j in range(4)]).pvalue > 1e-3  # neighbours
    assert position_uniform(0, 5) != position_uniform(1, 5) and position_uniform(0, 5) != position_uniform(0, 6)


def test_a_draw_never_picks_a_token_of_probability_zero() -> None:
    p = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    assert {draw(p, u / 1000) for u in range(1000)} == {1, 3}
    assert draw(p, 0.0) == 1 and draw(p, 0.999999999) == 3


def test_sample_token() -> None:
    row = torch.tensor([0.1, 2.0, -1.0, 1.9])
    assert sample_token(row, 0.0, 0, 0) == 1
    assert sample_token(row, -1.0, 0, 0) == 1
    a = [sample_token(row, 1.0, 3, n) for n in range(100)]
    assert a == [sample_token(row, 1.0, 3, n) for n in range(100)]
    assert len(set(a)) > 1
    counts = Counter(sample_token(row, 0.7, 11, n) for n in range(DRAWS))
    assert chi2_p(counts, target_probs(row, 0.7)) > 1e-3


def test_target_probs() -> None:
    row = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    p = target_probs(row, 0.5)
    assert p.dtype == torch.float64
    assert torch.allclose(p, torch.softmax(torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64), -1))
    assert abs(float(p.sum()) - 1.0) < 1e-12
