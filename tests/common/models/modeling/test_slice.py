"""ModelSlice against Hugging Face: full forward, cached decoding, tree attention, chaining."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from common.models.modeling import KVCache, ModelSlice, causal_attend, load_slice
from tests.support.tiny_models import EOS_ID, make_tiny_model

VOCAB = 320
VARIANTS = {
    "llama": {},
    "llama_tied": {"tie": True},
    "llama_rope3": {"rope_llama3": True},
    "llama_bias": {"extra_config": {"attention_bias": True, "mlp_bias": True}},
    "qwen2": {"family": "qwen2"},
    "qwen2_mha": {"family": "qwen2", "kv_heads": 4, "tie": True},
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slice_models")
    return {name: make_tiny_model(root / name, seed=i, **kw) for i, (name, kw) in enumerate(VARIANTS.items())}


def _whole(model_dir: Path, dtype: torch.dtype = torch.float32) -> ModelSlice:
    return load_slice(model_dir, None, with_embedding=True, with_head=True, dtype=dtype)


def _full_logits(model: ModelSlice, ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[L, V]`` of a plain causal forward of ``ids`` on a fresh cache."""
    n = ids.numel()
    return model.logits(model(ids, torch.arange(n), causal_attend(0, n), model.new_cache()))


def _ids(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=gen)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_whole_model_matches_hugging_face(model_dirs: dict[str, Path], variant: str) -> None:
    hf = AutoModelForCausalLM.from_pretrained(model_dirs[variant], dtype=torch.float32).eval()
    model = _whole(model_dirs[variant])
    gen = torch.Generator().manual_seed(1)
    for n in (1, 7, 90):  # 90 > the llama3 variant's original context of 32
        ids = _ids(gen, n)
        with torch.no_grad():
            expected = hf(ids[None]).logits[0].float()
        torch.testing.assert_close(_full_logits(model, ids), expected, rtol=0, atol=1e-4)


def test_num_parameters_matches_hugging_face(model_dirs: dict[str, Path]) -> None:
    for variant in ("llama", "llama_tied", "qwen2"):
        hf = AutoModelForCausalLM.from_pretrained(model_dirs[variant], dtype=torch.float32)
        assert _whole(model_dirs[variant]).num_parameters == hf.num_parameters()


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_cached_decoding_matches_full_forward(model_dirs: dict[str, Path], variant: str) -> None:
    model = _whole(model_dirs[variant])
    ids = _ids(torch.Generator().manual_seed(2), 40)
    expected = _full_logits(model, ids)
    # Small capacity so the cache grows several times along the way.
    cache = model.new_cache(initial_capacity=4)
    chunks = [9, 1, 1, 1, 3, 5, 1, 2, 17]
    start = 0
    for size in chunks:
        stop = start + size
        hidden = model(ids[start:stop], torch.arange(start, stop), causal_attend(start, size), cache)
        torch.testing.assert_close(model.logits(hidden), expected[start:stop], rtol=0, atol=1e-4)
        start = stop
    assert cache.length == 40 and cache.capacity == 64


def _random_forest(gen: torch.Generator, n: int) -> list[int]:
    """Parent index per node (-1 for a root); parents always precede their children."""
    return [int(torch.randint(-1, i, (1,), generator=gen)) if i else -1 for i in range(n)]


def _paths(parents: list[int]) -> list[list[int]]:
    paths: list[list[int]] = []
    for i, parent in enumerate(parents):
        paths.append([*(paths[parent] if parent >= 0 else []), i])
    return paths


def _tree_attend(past: int, parents: list[int]) -> torch.Tensor:
    """``[N, past + N]``: every node sees the whole past plus its ancestors and itself."""
    n = len(parents)
    attend = torch.zeros(n, past + n, dtype=torch.bool)
    attend[:, :past] = True
    for i, path in enumerate(_paths(parents)):
        attend[i, [past + j for j in path]] = True
    return attend


def _forward_tree(
    model: ModelSlice, cache: KVCache, tokens: torch.Tensor, parents: list[int]
) -> torch.Tensor:
    past = cache.length
    depths = torch.tensor([len(p) - 1 for p in _paths(parents)])
    return model(tokens, past + depths, _tree_attend(past, parents), cache)


@pytest.mark.parametrize("variant", ["llama_rope3", "qwen2"])
def test_tree_attention_matches_each_root_to_node_path(model_dirs: dict[str, Path], variant: str) -> None:
    model = _whole(model_dirs[variant])
    gen = torch.Generator().manual_seed(3)
    context = _ids(gen, 12)
    cache = model.new_cache(initial_capacity=8)
    model(context, torch.arange(12), causal_attend(0, 12), cache)
    parents = _random_forest(gen, 16)
    assert parents.count(-1) >= 2 and max(len(p) for p in _paths(parents)) >= 3  # a real forest
    tokens = _ids(gen, 16)
    tree_logits = model.logits(_forward_tree(model, cache, tokens, parents))
    assert cache.length == 12 + 16
    for node, path in enumerate(_paths(parents)):
        sequence = torch.cat([context, tokens[path]])
        expected = _full_logits(model, sequence)[-1]
        torch.testing.assert_close(tree_logits[node], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_keep_one_path_then_continue_matches_plain_sequence(
    model_dirs: dict[str, Path], variant: str
) -> None:
    model = _whole(model_dirs[variant])
    gen = torch.Generator().manual_seed(4)
    context = _ids(gen, 10)
    cache = model.new_cache()
    model(context, torch.arange(10), causal_attend(0, 10), cache)
    parents = [-1, 0, 0, 1, 2, 3, 3, 5, -1, 8]
    tokens = _ids(gen, len(parents))
    _forward_tree(model, cache, tokens, parents)
    path = _paths(parents)[7]  # 0 -> 1 -> 3 -> 5 -> 7
    cache.keep(torch.tensor([*range(10), *(10 + j for j in path)]))
    assert cache.length == 10 + len(path)

    accepted = torch.cat([context, tokens[path]])
    follow = _ids(gen, 3)
    reference = _full_logits(model, torch.cat([accepted, follow]))
    position = accepted.numel()
    for step, token in enumerate(follow):
        hidden = model(token[None], torch.tensor([position + step]), causal_attend(cache.length, 1), cache)
        torch.testing.assert_close(model.logits(hidden)[0], reference[position + step], rtol=0, atol=1e-4)


@pytest.mark.parametrize("ranges", [[(0, 2), (2, 4)], [(0, 1), (1, 3), (3, 4)]])
def test_chained_slices_match_one_slice(model_dirs: dict[str, Path], ranges: list[tuple[int, int]]) -> None:
    model_dir = model_dirs["qwen2"]
    whole = _whole(model_dir)
    parts = [
        load_slice(model_dir, r, with_embedding=i == 0, with_head=i == len(ranges) - 1, dtype=torch.float32)
        for i, r in enumerate(ranges)
    ]
    caches = [p.new_cache() for p in parts]
    whole_cache = whole.new_cache()
    gen = torch.Generator().manual_seed(5)
    context = _ids(gen, 15)
    parents = [-1, 0, 0, 1, -1]
    tree = _ids(gen, len(parents))
    depths = torch.tensor([len(p) - 1 for p in _paths(parents)])
    # A causal prefill followed by a tree step, through every slice in turn.
    steps = [
        (context, torch.arange(15), causal_attend(0, 15)),
        (tree, 15 + depths, _tree_attend(15, parents)),
    ]
    for inputs, positions, attend in steps:
        hidden = inputs
        for part, cache in zip(parts, caches, strict=True):
            hidden = part(hidden, positions, attend, cache)
        expected = whole.logits(whole(inputs, positions, attend, whole_cache))
        torch.testing.assert_close(parts[-1].logits(hidden), expected, rtol=0, atol=1e-5)
    assert [c.length for c in caches] == [20] * len(ranges)


@pytest.mark.parametrize("variant", ["llama", "llama_tied", "qwen2"])
def test_greedy_decoding_reproduces_generate(model_dirs: dict[str, Path], variant: str) -> None:
    hf = AutoModelForCausalLM.from_pretrained(model_dirs[variant], dtype=torch.float32).eval()
    model = _whole(model_dirs[variant])
    gen = torch.Generator().manual_seed(6)
    for prompt_len in (3, 8, 13):
        prompt = _ids(gen, prompt_len)
        with torch.no_grad():
            output = hf.generate(
                prompt[None],
                attention_mask=torch.ones(1, prompt_len, dtype=torch.long),
                do_sample=False,
                max_new_tokens=20,
                pad_token_id=EOS_ID,
            )
        expected = output[0, prompt_len:].tolist()

        cache = model.new_cache(initial_capacity=8)
        hidden = model(prompt, torch.arange(prompt_len), causal_attend(0, prompt_len), cache)
        produced: list[int] = []
        while len(produced) < 20:
            token = int(model.logits(hidden[-1:]).argmax(-1))
            produced.append(token)
            if token in model.spec.eos_token_ids:
                break
            step = torch.tensor([token])
            hidden = model(step, torch.tensor([cache.length]), causal_attend(cache.length, 1), cache)
        assert produced == expected


def test_bfloat16_slice_runs_close_to_float32(model_dirs: dict[str, Path]) -> None:
    model32 = _whole(model_dirs["llama"])
    model16 = _whole(model_dirs["llama"], torch.bfloat16)
    assert model16.dtype == torch.bfloat16
    ids = _ids(torch.Generator().manual_seed(7), 20)
    logits16 = _full_logits(model16, ids)
    logits32 = _full_logits(model32, ids)
    assert logits16.dtype == torch.float32
    assert (logits16 - logits32).abs().max() < 0.1 * logits32.abs().max()


def test_hidden_slice_accepts_other_dtypes_and_rejects_bad_inputs(model_dirs: dict[str, Path]) -> None:
    model_dir = model_dirs["llama"]
    first = load_slice(model_dir, (0, 2), with_embedding=True, with_head=False, dtype=torch.float32)
    second = load_slice(model_dir, (2, 4), with_embedding=False, with_head=True, dtype=torch.float32)
    ids = torch.arange(5)
    cache = first.new_cache()
    hidden = first(ids, torch.arange(5), causal_attend(0, 5), cache)
    assert hidden.shape == (5, 64)
    with pytest.raises(RuntimeError):
        first.logits(hidden)
    with pytest.raises(ValueError):
        first(hidden, torch.arange(5), causal_attend(5, 5), cache)  # hidden into an embedding slice
    with pytest.raises(ValueError):
        second(ids, torch.arange(5), causal_attend(0, 5), second.new_cache())  # ids into a hidden slice
    with pytest.raises(ValueError):
        first(ids, torch.arange(5), causal_attend(0, 5), cache)  # mask ignores the 5 cached rows
    with pytest.raises(ValueError):
        first(ids, torch.arange(4), causal_attend(5, 5), cache)
    with pytest.raises(ValueError):
        first(ids, torch.arange(5), causal_attend(5, 5).float(), cache)
    assert cache.length == 5
    out = second(hidden.double(), torch.arange(5), causal_attend(0, 5), second.new_cache())
    assert out.dtype == torch.float32


def test_causal_attend() -> None:
    expected = torch.tensor(
        [
            [True, True, True, False, False],
            [True, True, True, True, False],
            [True, True, True, True, True],
        ]
    )
    assert torch.equal(causal_attend(2, 3), expected)
    assert causal_attend(0, 0).shape == (0, 0)
