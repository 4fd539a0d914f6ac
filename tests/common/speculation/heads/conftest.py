"""A tiny base model and a freshly initialised head for it, shared by the head tests."""

from pathlib import Path

import pytest
import torch

from common.speculation.heads.model import DraftHead, new_head
from tests.support.tiny_models import make_tiny_model

HIDDEN = 64


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("head-base") / "base", num_layers=2, hidden=HIDDEN, seed=3)


@pytest.fixture
def head(tiny_base: Path) -> DraftHead:
    return new_head(tiny_base, intermediate_size=48, draft_ids=None, dtype=torch.float32, seed=1).requires_grad_(False)
