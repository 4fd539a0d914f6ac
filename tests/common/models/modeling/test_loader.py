"""load_slice reads only its own tensors; spec parsing and checkpoint errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.models.modeling import (
    CheckpointError,
    ModelSpec,
    UnsupportedModelError,
    causal_attend,
    checkpoint_tensor_names,
    load_model_spec,
    load_slice,
)
from tests.support.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("loader") / "llama")


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("loader") / "tied", tie=True, seed=3)


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / model_dir.name))


def _edit_config(model_dir: Path, **changes: object) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _logits(model_dir: Path) -> torch.Tensor:
    model = load_slice(model_dir, None, with_embedding=True, with_head=True, dtype=torch.float32)
    ids = torch.arange(3, 20)
    return model.logits(model(ids, torch.arange(17), causal_attend(0, 17), model.new_cache()))


def test_middle_slice_reads_only_its_layers(llama_dir: Path) -> None:
    middle = load_slice(llama_dir, (1, 3), with_embedding=False, with_head=False, dtype=torch.float32)
    names = middle.loaded_tensor_names
    assert names
    assert all(n.startswith(("model.layers.1.", "model.layers.2.")) for n in names)
    expected = [
        n for n in checkpoint_tensor_names(llama_dir) if n.startswith(("model.layers.1.", "model.layers.2."))
    ]
    assert sorted(names) == expected
    assert middle.layer_range == (1, 3)
    assert not middle.with_embedding and not middle.with_head
    assert middle.embed_tokens is None and middle.lm_head is None


def test_end_slices_read_embedding_norm_and_head(llama_dir: Path) -> None:
    first = load_slice(llama_dir, (0, 1), with_embedding=True, with_head=False, dtype=torch.float32)
    assert "model.embed_tokens.weight" in first.loaded_tensor_names
    assert not any(
        n.startswith(("lm_head", "model.norm", "model.layers.1.")) for n in first.loaded_tensor_names
    )
    last = load_slice(llama_dir, (3, 4), with_embedding=False, with_head=True, dtype=torch.float32)
    assert {"lm_head.weight", "model.norm.weight"} <= set(last.loaded_tensor_names)
    assert "model.embed_tokens.weight" not in last.loaded_tensor_names
    whole = load_slice(llama_dir, None, with_embedding=True, with_head=True, dtype=torch.float32)
    assert sorted(whole.loaded_tensor_names) == checkpoint_tensor_names(llama_dir)
    assert whole.layer_range == (0, 4)


def test_tied_head_reads_the_embedding(tied_dir: Path) -> None:
    assert "lm_head.weight" not in checkpoint_tensor_names(tied_dir)
    head = load_slice(tied_dir, (2, 4), with_embedding=False, with_head=True, dtype=torch.float32)
    assert "model.embed_tokens.weight" in head.loaded_tensor_names
    embedding = load_file(tied_dir / "model.safetensors")["model.embed_tokens.weight"]
    torch.testing.assert_close(head.lm_head.weight, embedding, rtol=0, atol=0)
    whole = load_slice(tied_dir, None, with_embedding=True, with_head=True, dtype=torch.float32)
    assert whole.lm_head.weight is whole.embed_tokens.weight  # shared, held once


@pytest.mark.parametrize("layer_range", [(0, 0), (4, 4), (2, 1), (-1, 2), (0, 5), (4, 5)])
def test_bad_layer_range_is_a_checkpoint_error(llama_dir: Path, layer_range: tuple[int, int]) -> None:
    with pytest.raises(CheckpointError, match="layer range"):
        load_slice(llama_dir, layer_range, with_embedding=False, with_head=False, dtype=torch.float32)
    with pytest.raises(CheckpointError, match="layer range"):
        load_slice(llama_dir, (5, 5), with_embedding=False, with_head=True, dtype=torch.float32)


def test_head_only_slice_turns_last_hidden_into_logits(llama_dir: Path) -> None:
    head = load_slice(llama_dir, (4, 4), with_embedding=False, with_head=True, dtype=torch.float32)
    assert sorted(head.loaded_tensor_names) == ["lm_head.weight", "model.norm.weight"]
    body = load_slice(llama_dir, None, with_embedding=True, with_head=True, dtype=torch.float32)
    ids = torch.arange(3, 20)
    hidden = body(ids, torch.arange(17), causal_attend(0, 17), body.new_cache())
    torch.testing.assert_close(head.logits(hidden), body.logits(hidden), rtol=0, atol=0)
    cache = head.new_cache()
    assert torch.equal(head(hidden, torch.arange(17), causal_attend(0, 17), cache), hidden)  # no layers
    assert cache.length == 17
    embed = load_slice(llama_dir, (0, 0), with_embedding=True, with_head=False, dtype=torch.float32)
    assert embed.loaded_tensor_names == ("model.embed_tokens.weight",)


def test_missing_tensor_fails_only_for_slices_that_need_it(llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(llama_dir, tmp_path)
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["model.layers.2.self_attn.q_proj.weight"]
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    load_slice(model_dir, (0, 2), with_embedding=True, with_head=False, dtype=torch.float32)
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.self_attn\.q_proj\.weight"):
        load_slice(model_dir, (2, 4), with_embedding=False, with_head=True, dtype=torch.float32)


def test_wrong_tensor_shape_is_a_checkpoint_error(llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(llama_dir, tmp_path)
    tensors = load_file(model_dir / "model.safetensors")
    tensors["model.norm.weight"] = torch.ones(63)
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="shape"):
        load_slice(model_dir, (3, 4), with_embedding=False, with_head=True, dtype=torch.float32)


def test_missing_checkpoint_is_a_checkpoint_error(llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(llama_dir, tmp_path)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_slice(model_dir, None, with_embedding=True, with_head=True, dtype=torch.float32)


def test_sharded_checkpoint_loads_each_tensor_from_its_shard(llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(llama_dir, tmp_path)
    tensors = load_file(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    shards: dict[str, dict[str, torch.Tensor]] = {"model-00001-of-00002.safetensors": {}}
    shards["model-00002-of-00002.safetensors"] = {}
    weight_map = {}
    for i, (name, tensor) in enumerate(sorted(tensors.items())):
        shard = sorted(shards)[i % 2]
        shards[shard][name] = tensor
        weight_map[name] = shard
    for shard, content in shards.items():
        save_file(content, model_dir / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": weight_map}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    assert checkpoint_tensor_names(model_dir) == sorted(tensors)
    torch.testing.assert_close(_logits(model_dir), _logits(llama_dir), rtol=0, atol=0)
    (model_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard"):
        load_slice(model_dir, None, with_embedding=True, with_head=True, dtype=torch.float32)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"model_type": "mistral"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type"),
        ({"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type"),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16}, "sliding"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ],
)
def test_unsupported_configs(
    llama_dir: Path, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    model_dir = _copy(llama_dir, tmp_path)
    _edit_config(model_dir, **changes)
    with pytest.raises(UnsupportedModelError, match=message):
        load_slice(model_dir, None, with_embedding=True, with_head=True, dtype=torch.float32)


def test_missing_config_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="config.json"):
        load_model_spec(tmp_path)


def test_spec_of_a_saved_model(llama_dir: Path) -> None:
    spec = load_model_spec(llama_dir)
    assert (spec.family, spec.num_layers, spec.hidden_size, spec.intermediate_size) == ("llama", 4, 64, 160)
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim) == (4, 2, 16)
    assert spec.rope_type == "default" and spec.rope_theta == 10000.0
    assert spec.eos_token_ids == (2,) and spec.bos_token_id == 1
    assert spec.torch_dtype == "float32"
    assert not (spec.qkv_bias or spec.o_bias or spec.mlp_bias or spec.tie_word_embeddings)


_LEGACY = {
    "model_type": "llama",
    "vocab_size": 1000,
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "bfloat16",
}


def test_legacy_rope_scaling_and_eos_lists() -> None:
    config = {
        **_LEGACY,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "eos_token_id": [7, 9],
        "attention_bias": True,
    }
    spec = ModelSpec.from_config(config, {"eos_token_id": [9, 11], "bos_token_id": 5})
    assert spec.rope_theta == 500000.0 and spec.rope_scaling is not None
    assert spec.rope_scaling.original_max_position_embeddings == 8192
    assert spec.eos_token_ids == (7, 9, 11)
    assert spec.bos_token_id == 5
    assert spec.num_kv_heads == 6 and spec.head_dim == 16  # defaults: MHA, hidden / heads
    assert spec.qkv_bias and spec.o_bias and not spec.mlp_bias
    assert spec.torch_dtype == "bfloat16"


def test_legacy_defaults() -> None:
    spec = ModelSpec.from_config({**_LEGACY, "eos_token_id": None, "rope_scaling": None})
    assert spec.rope_theta == 10000.0 and spec.rope_scaling is None
    assert spec.eos_token_ids == ()
    old_type_key = {**_LEGACY, "rope_scaling": {"type": "default"}, "rope_theta": 1e6}
    assert ModelSpec.from_config(old_type_key).rope_theta == 1e6


def test_qwen2_biases_and_rope_parameters_precedence() -> None:
    config = {
        **_LEGACY,
        "model_type": "qwen2",
        "attention_bias": False,  # ignored: Qwen2 always has q/k/v biases
        "rope_theta": 1.0,  # rope_parameters wins when both are present
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "use_sliding_window": False,
        "sliding_window": 4096,
    }
    spec = ModelSpec.from_config(config)
    assert spec.qkv_bias and not spec.o_bias and not spec.mlp_bias
    assert spec.rope_theta == 1000000.0
