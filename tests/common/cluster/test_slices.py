"""Per-service slices: which tensors each service gets; content-hashed folders built once."""

from __future__ import annotations

import pytest
import torch

from common.cluster.slices import build_slice, folder_digest, service_tensors
from common.models.modeling import load_slice
from common.models.modeling.loader import checkpoint_tensor_names
from tests.support.tiny_models import make_tiny_model

NAMES = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight",
         *(f"model.layers.{i}.{p}.weight" for i in range(4) for p in ("mlp.up_proj", "input_layernorm"))]


@pytest.mark.parametrize(("service", "options", "expected"), [
    ("scheduler", {}, set()),
    ("drafter", {}, set(NAMES)),
    ("verifier", {}, {"model.norm.weight", "lm_head.weight"}),
    ("verifier", {"tied": True}, {"model.norm.weight", "model.embed_tokens.weight"}),
    ("stage-1", {"layers": (0, 2), "first_stage": True},
     {"model.embed_tokens.weight", *(n for n in NAMES if n.startswith(("model.layers.0.", "model.layers.1.")))}),
    ("stage-2", {"layers": (2, 4)}, {n for n in NAMES if n.startswith(("model.layers.2.", "model.layers.3."))}),
])
def test_each_service_gets_only_its_tensors(service, options, expected):
    assert set(service_tensors(service, NAMES, **options)) == expected


def test_verifier_of_a_model_without_lm_head_takes_the_embedding():
    names = [n for n in NAMES if n != "lm_head.weight"]
    assert "model.embed_tokens.weight" in service_tensors("verifier", names)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "base", num_layers=4, seed=2)


def test_a_slice_loads_like_the_full_checkpoint_and_is_named_by_its_content(model, tmp_path):
    tensors = service_tensors("stage-2", checkpoint_tensor_names(model), layers=(2, 4))
    built = build_slice(model, tensors, "float32", tmp_path / "store")
    assert built.path.name == built.digest == folder_digest(built.path)
    assert set(checkpoint_tensor_names(built.path)) == set(tensors)
    assert (built.path / "config.json").is_file() and (built.path / "tokenizer.json").is_file()
    sliced = load_slice(built.path, (2, 4), with_embedding=False, with_head=False, dtype=torch.float32)
    whole = load_slice(model, (2, 4), with_embedding=False, with_head=False, dtype=torch.float32)
    for (name, a), (_, b) in zip(sliced.state_dict().items(), whole.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_rebuilding_gives_the_same_hash_and_reuses_the_folder(model, tmp_path):
    tensors = service_tensors("verifier", checkpoint_tensor_names(model))
    first = build_slice(model, tensors, "bfloat16", tmp_path / "a")
    again = build_slice(model, tensors, "bfloat16", tmp_path / "a")
    elsewhere = build_slice(model, tensors, "bfloat16", tmp_path / "b")  # no recipe cache: written anew
    assert first == again and elsewhere.digest == first.digest
    assert build_slice(model, tensors, "float32", tmp_path / "a").digest != first.digest
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".building-")]


def test_unknown_dtype_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        build_slice(model, (), "float16", tmp_path)
