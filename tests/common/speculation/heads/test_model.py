"""The draft head module: its row maths, files and the refusal of a base it was not trained for."""

import dataclasses
from pathlib import Path

import pytest
import torch

from common.models.modeling import causal_attend
from common.models.modeling.loader import read_embedding_and_head
from common.speculation.heads import HeadMismatchError, load_head, save_head
from common.speculation.heads.model import DraftHead, new_head
from tests.common.speculation.heads.conftest import HIDDEN
from tests.support.tiny_models import make_tiny_model


def _run(head: DraftHead, n: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, HIDDEN, generator=gen)
    tokens = torch.randint(0, 300, (n,), generator=gen)
    return head(features, tokens, torch.arange(n), causal_attend(0, n), head.new_cache())


def test_head_holds_only_fc_and_one_layer_without_input_norm(head: DraftHead) -> None:
    names = set(head.trainable_state())
    assert {"fc.weight", "fc.bias"} <= names
    assert all(name.startswith(("fc.", "layer.")) for name in names)
    assert not any("input_layernorm" in name for name in names)
    assert head.fc.weight.shape == (HIDDEN, 2 * HIDDEN)
    assert head.layer.mlp.up_proj.weight.shape == (48, HIDDEN)


def test_embedding_and_lm_head_are_the_base_ones(head: DraftHead, tiny_base: Path) -> None:
    embedding, lm_head = read_embedding_and_head(tiny_base)
    assert torch.equal(head.embed_tokens.weight, embedding)
    assert torch.equal(head.lm_head.weight, lm_head)
    features = torch.randn(3, HIDDEN)
    assert torch.allclose(head.logits(features), features @ lm_head.T)


def test_save_and_load_round_trip(head: DraftHead, tiny_base: Path, tmp_path: Path) -> None:
    save_head(head, tmp_path / "h", dtype=torch.float32, extra={"note": 1})
    loaded = load_head(tmp_path / "h", tiny_base, dtype=torch.float32)
    assert torch.equal(_run(head), _run(loaded))
    assert loaded.config.weights == "float32" and [f for f, _ in loaded.config.weight_files] == [
        "head-00001-of-00001.safetensors"]
    assert dataclasses.replace(loaded.config, weights=head.config.weights, weight_files=()) == head.config


def test_reduced_vocabulary_maps_rows_back_to_full_ids(tiny_base: Path, tmp_path: Path) -> None:
    ids = torch.tensor([5, 70, 2, 9])
    head = new_head(tiny_base, intermediate_size=32, draft_ids=ids, dtype=torch.float32)
    _, lm_head = read_embedding_and_head(tiny_base)
    assert torch.equal(head.lm_head.weight, lm_head[ids])
    assert head.full_ids(torch.tensor([[3, 1]])).tolist() == [[9, 70]]
    save_head(head, tmp_path / "h")
    loaded = load_head(tmp_path / "h", tiny_base, dtype=torch.float32)
    assert loaded.full_ids(torch.tensor([0, 2])).tolist() == [5, 2]
    assert loaded.config.draft_vocab_size == 4


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"seed": 4}, "embedding matrices differ"), ({"hidden": 32, "heads": 2, "kv_heads": 1}, "hidden_size 64 vs 32")],
)
def test_a_head_refuses_another_base(head: DraftHead, tmp_path: Path, kwargs: dict, reason: str) -> None:
    save_head(head, tmp_path / "h")
    other = make_tiny_model(tmp_path / "other", num_layers=2, **({"hidden": HIDDEN, "seed": 3} | kwargs))
    with pytest.raises(HeadMismatchError, match=reason):
        load_head(tmp_path / "h", other, dtype=torch.float32)


def test_a_folder_without_a_head_config_is_refused(tiny_base: Path, tmp_path: Path) -> None:
    with pytest.raises(HeadMismatchError, match="cannot read head config"):
        load_head(tmp_path, tiny_base, dtype=torch.float32)
