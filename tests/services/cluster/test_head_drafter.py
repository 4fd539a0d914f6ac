"""A LAN cluster that drafts with a head: the plan, the drafter's two folders, each service's cluster file."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from common.cluster.inventory import parse_inventory
from common.cluster.keys import create_keys, load_keys
from common.speculation.heads import load_head, shipped
from services.cluster.bringup import build_slices, plan, service_spec
from services.launcher import LaunchError
from tests.common.cluster.test_inventory import EXAMPLE
from tests.support.shipped_head import base_with_shipped_head


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A base, a head trained for it (here: initialised) in a shipped folder, and another base."""
    return base_with_shipped_head(tmp_path_factory.mktemp("lan-head"), num_layers=3)


def _inventory(base: Path, draft_head: str, tmp_path: Path):
    data = copy.deepcopy(tomllib.loads(EXAMPLE.read_text()))
    data["models"].update(base=str(base), draft_head=draft_head, dtype="bfloat16")
    for board in data["boards"]:
        board["memory_mib"] = 4096
    inv = parse_inventory(data)
    names = [b.name for b in inv.boards]
    create_keys(tmp_path / "keys", names)
    return inv, load_keys(tmp_path / "keys", names, EXAMPLE)


def test_the_drafter_board_gets_the_head_and_the_base_embedding_only(models, tmp_path) -> None:
    base, head_dir, _ = models
    inv, keys = _inventory(base, str(head_dir), tmp_path)
    bringup = plan(inv, keys)
    assert bringup.spec.draft_head == str(head_dir.resolve()) and bringup.spec.draft == ""
    bringup = build_slices(bringup, tmp_path / "store")
    parts = {s.name: s.parts for s in bringup.services}
    assert len(parts["drafter"]) == 2 and len(parts["scheduler"]) == 1
    embedding_slice, head_copy = (p.path for p in parts["drafter"])
    assert sorted(p.name for p in head_copy.iterdir()) == ["config.json", "head-00001-of-00001.safetensors"]
    with safe_open(str(embedding_slice / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == {"model.embed_tokens.weight", "lm_head.weight"}  # an untied base
        assert handle.get_slice("model.embed_tokens.weight").get_dtype() == "F32"  # as stored, not the cluster's bf16
    loaded = load_head(head_copy, embedding_slice, dtype=torch.float32)  # the fingerprint still matches
    assert loaded.config.base.embedding_sha256 == json.loads((head_dir / "config.json").read_text())[
        "base_embedding_sha256"]
    drafter = next(s for s in bringup.services if s.name == "drafter")
    home = drafter.board.home
    spec = service_spec(bringup, drafter)
    assert spec.draft_head == f"{home}/slices/{parts['drafter'][1].digest}"
    assert spec.base == f"{home}/slices/{parts['drafter'][0].digest}" and spec.draft == ""
    verifier = service_spec(bringup, next(s for s in bringup.services if s.name == "verifier"))
    assert verifier.draft_head and verifier.draft == ""  # the verifier sends the head the base's features
    scheduler = service_spec(bringup, next(s for s in bringup.services if s.name == "scheduler"))
    assert scheduler.draft == ""  # a head shares the base's tokenizer: nothing else to load
    assert bringup.board_need_bytes[inv.drafter] > 0


def test_shipped_means_the_head_shipped_for_the_base_and_nothing_else(models, tmp_path, monkeypatch) -> None:
    base, head_dir, other = models
    monkeypatch.setattr(shipped, "SHIPPED_DIR", head_dir.parent)
    inv, keys = _inventory(base, "shipped", tmp_path)
    assert plan(inv, keys).spec.draft_head == str(head_dir.resolve())
    inv, keys = _inventory(other, "shipped", tmp_path)
    with pytest.raises(LaunchError, match="no head ships for the base other-base"):
        plan(inv, keys)
    inv, keys = _inventory(other, str(head_dir), tmp_path)
    with pytest.raises(LaunchError, match="trained for another base"):
        plan(inv, keys)
