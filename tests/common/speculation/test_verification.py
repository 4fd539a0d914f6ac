"""Acceptance: greedy walks the argmax exactly; sampling is lossless (chi-square against softmax)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from common.speculation.tree import DraftTree
from common.speculation.verification import (
    Acceptance,
    accept_greedy,
    accept_sampling,
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


Sampler = Callable[[Sequence[int], Sequence[int], torch.Tensor, float, torch.Generator], Acceptance]


def emitted(tokens: Sequence[int], result: Acceptance) -> list[int]:
    """Output tokens of one verification: the accepted drafts after the root, then the next token."""
    return [tokens[i] for i in result.path[1:]] + [result.next_token]


def draw_many(sampler: Sampler, temperature: float, seed: int) -> list[tuple[list[int], Acceptance]]:
    logits = s_logits()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(DRAWS):
        result = sampler(S_TOKENS, S_PARENTS, logits, temperature, gen)
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


def always_first_child(tokens, parents, logits, temperature, generator) -> Acceptance:
    """A WRONG sampler: accept the first child at every level, then sample from the full p."""
    return descend_first_children(parents, logits, temperature, generator, [0])


def descend_first_children(parents, logits, temperature, generator, path: list[int]) -> Acceptance:
    while True:
        kids = [i for i in range(1, len(parents)) if parents[i] == path[-1]]
        if not kids:
            return Acceptance(tuple(path), sample_token(logits[path[-1]], temperature, generator))
        path.append(kids[0])


def no_residual(tokens, parents, logits, temperature, generator) -> Acceptance:
    """A subtly WRONG sampler: accepts with p(x) but, when every child is rejected, draws the next token
    from the full p instead of the residual (and never renormalises between siblings)."""
    path = [0]
    while True:
        node = path[-1]
        p = target_probs(logits[node], temperature)
        kids = [i for i in range(1, len(parents)) if parents[i] == node]
        accepted = None
        for c in kids:
            if float(torch.rand((), generator=generator, dtype=torch.float64)) < float(p[tokens[c]]):
                accepted = c
                break
        if accepted is None:
            return Acceptance(tuple(path), int(torch.multinomial(p, 1, generator=generator)))
        path.append(accepted)


def first_child_below_root(tokens, parents, logits, temperature, generator) -> Acceptance:
    """A WRONG sampler that is right at the root: below it, always accepts the first child."""
    path = [0]
    p = target_probs(logits[0], temperature)
    for c in [i for i in range(1, len(parents)) if parents[i] == 0]:
        if float(torch.rand((), generator=generator, dtype=torch.float64)) < float(p[tokens[c]]):
            path.append(c)
            break
        p[tokens[c]] = 0.0
        p /= p.sum()
    else:
        return Acceptance((0,), int(torch.multinomial(p, 1, generator=generator)))
    return descend_first_children(parents, logits, temperature, generator, path)


@pytest.fixture(scope="module", params=[1.0, 0.7])
def sampled(request):
    temperature = request.param
    return temperature, draw_many(accept_sampling, temperature, seed=20240601)


def test_sampling_first_token_is_target_distributed(sampled) -> None:
    temperature, samples = sampled
    assert first_token_p(samples, temperature) > 1e-3


@pytest.mark.parametrize("child", [1, 2, 3])
def test_sampling_second_token_given_first_child(sampled, child: int) -> None:
    """Child 1 has two children of its own (recursive rejection), 2 has one, 3 is a leaf (plain draw)."""
    temperature, samples = sampled
    assert second_token_p(samples, temperature, child) > 1e-3


def test_sampling_second_token_given_residual(sampled) -> None:
    """When every root child is rejected, the residual draw is p restricted to non-child tokens."""
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


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_negative_control_always_first_child(temperature: float) -> None:
    samples = draw_many(always_first_child, temperature, seed=20240601)
    assert first_token_p(samples, temperature) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_negative_control_no_residual(temperature: float) -> None:
    samples = draw_many(no_residual, temperature, seed=20240601)
    assert first_token_p(samples, temperature) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_negative_control_wrong_below_root(temperature: float) -> None:
    """The conditional test has power too: a sampler right at the root but wrong below it."""
    samples = draw_many(first_child_below_root, temperature, seed=20240601)
    assert first_token_p(samples, temperature) > 1e-3
    assert second_token_p(samples, temperature, 1) < 1e-6


@settings(max_examples=100, deadline=None)
@given(trees(max_nodes=20, vocab=VOCAB), st.integers(0, 2**31 - 1), st.sampled_from([0.3, 0.7, 1.0, 2.0]))
def test_sampling_result_is_a_path_and_next_token_avoids_rejected_children(tree, seed, temperature) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(tree), VOCAB, generator=gen) * 2
    result = accept_sampling(tree.tokens, tree.parents, logits, temperature, gen)
    assert result.path[0] == 0
    assert all(tree.parents[b] == a for a, b in zip(result.path, result.path[1:], strict=False))
    assert 0 <= result.next_token < VOCAB
    rejected = {tree.tokens[c] for c in tree.children().get(result.path[-1], [])}
    assert result.next_token not in rejected


def test_sampling_with_a_certain_child_always_accepts_it() -> None:
    tokens, parents = (0, 2, 1), (-1, 0, 0)
    logits = torch.full((3, 4), -1e4)
    logits[0, 1] = 0.0  # p(1) = 1 exactly at the root
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        result = accept_sampling(tokens, parents, logits, 1.0, gen)
        assert result.path == (0, 2)


# -------------------------------------------------------------------------------------- determinism
def test_sampling_is_deterministic_per_seed() -> None:
    logits = s_logits()

    def run(seed: int) -> list[Acceptance]:
        gen = torch.Generator().manual_seed(seed)
        return [accept_sampling(S_TOKENS, S_PARENTS, logits, 0.8, gen) for _ in range(200)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sample_token() -> None:
    row = torch.tensor([0.1, 2.0, -1.0, 1.9])
    assert sample_token(row, 0.0, None) == 1
    assert sample_token(row, -1.0, None) == 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = [sample_token(row, 1.0, g1) for _ in range(100)]
    assert a == [sample_token(row, 1.0, g2) for _ in range(100)]
    assert len(set(a)) > 1
    gen = torch.Generator().manual_seed(11)
    counts = Counter(sample_token(row, 0.7, gen) for _ in range(DRAWS))
    assert chi2_p(counts, target_probs(row, 0.7)) > 1e-3


def test_target_probs() -> None:
    row = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    p = target_probs(row, 0.5)
    assert p.dtype == torch.float64
    assert torch.allclose(p, torch.softmax(torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64), -1))
    assert abs(float(p.sum()) - 1.0) < 1e-12
