"""Hypothesis strategies and small helpers shared by the unit tests: random valid draft trees."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from common.speculation.tree import DraftTree


@st.composite
def trees(
    draw: st.DrawFn,
    min_nodes: int = 1,
    max_nodes: int = 30,
    vocab: int = 6,
    root_token: int | None = None,
    score_ordered: bool = False,
) -> DraftTree:
    """A valid draft tree: parents precede children, distinct tokens under one parent, scores
    non-increasing along every path (root 0.0). ``score_ordered`` renumbers nodes by descending score,
    ties by creation order, as a real drafter does."""
    n = draw(st.integers(min_nodes, max_nodes))
    root = draw(st.integers(0, vocab - 1)) if root_token is None else root_token
    tokens, parents, scores = [root], [-1], [0.0]
    used: dict[int, set[int]] = {}
    for i in range(1, n):
        open_parents = [p for p in range(i) if len(used.get(p, ())) < vocab]
        parent = open_parents[draw(st.integers(0, len(open_parents) - 1))]
        free = sorted(set(range(vocab)) - used.get(parent, set()))
        token = free[draw(st.integers(0, len(free) - 1))]
        used.setdefault(parent, set()).add(token)
        step = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.5]))
        tokens.append(token)
        parents.append(parent)
        scores.append(scores[parent] - step)
    tree = DraftTree(tuple(tokens), tuple(parents), tuple(scores))
    if score_ordered:
        order = [0, *sorted(range(1, n), key=lambda i: (-scores[i], i))]
        tree = renumber(tree, order)
    return tree


def renumber(tree: DraftTree, order: Sequence[int]) -> DraftTree:
    """The same tree with node ``order[i]`` as node ``i`` (``order`` must be a topological order)."""
    new = {old: i for i, old in enumerate(order)}
    return DraftTree(
        tuple(tree.tokens[o] for o in order),
        tuple(-1 if i == 0 else new[tree.parents[o]] for i, o in enumerate(order)),
        tuple(tree.scores[o] for o in order),
    )


@st.composite
def topological_orders(draw: st.DrawFn, tree: DraftTree) -> list[int]:
    """A random order of all nodes, root first, every parent before its children."""
    kids = tree.children()
    order, ready = [0], list(kids.get(0, []))
    while ready:
        node = ready.pop(draw(st.integers(0, len(ready) - 1)))
        order.append(node)
        ready.extend(kids.get(node, []))
    return order


def subtree(tree: DraftTree, node: int) -> tuple[int, ...]:
    """``node`` and all its descendants, ascending."""
    inside, out = {node}, [node]
    for i in range(node + 1, len(tree)):
        if tree.parents[i] in inside:
            inside.add(i)
            out.append(i)
    return tuple(out)


def path_to(tree: DraftTree, node: int) -> list[int]:
    """Node indices from the root down to ``node``."""
    out = [node]
    while tree.parents[out[-1]] >= 0:
        out.append(tree.parents[out[-1]])
    return out[::-1]


def token_path(tree: DraftTree, node: int) -> tuple[int, ...]:
    return tuple(tree.tokens[i] for i in path_to(tree, node))


@st.composite
def root_paths(draw: st.DrawFn, tree: DraftTree) -> list[int]:
    """A random root-to-node path (possibly just the root)."""
    return path_to(tree, draw(st.integers(0, len(tree) - 1)))


@st.composite
def next_tokens(draw: st.DrawFn, tree: DraftTree, node: int, vocab: int = 6) -> int:
    """Mostly the token of one of ``node``'s children (so the prune keeps something), else any token."""
    kids = tree.children().get(node, [])
    if kids and draw(st.integers(0, 3)):
        return tree.tokens[draw(st.sampled_from(kids))]
    return draw(st.integers(0, vocab))
