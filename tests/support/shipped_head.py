"""A tiny base with a head shipped for it (in a ``shipped`` folder of its own), and another base it does not fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.speculation.heads.model import new_head, save_head
from common.speculation.heads.packing import INT8_ROWS
from tests.support.tiny_models import make_tiny_model


def base_with_shipped_head(root: Path, num_layers: int, extra: dict[str, Any] | None = None) -> tuple[Path, Path, Path]:
    """(base, its head's folder ``root/shipped/tiny-base``, another base); ``extra``: more of the head's config."""
    base = make_tiny_model(root / "tiny-base", family="qwen2", num_layers=num_layers, seed=4)
    other = make_tiny_model(root / "other-base", family="qwen2", num_layers=num_layers, seed=5)
    head = new_head(base, intermediate_size=32, draft_ids=None, dtype=torch.float32, seed=1, base_name="tiny-base")
    save_head(head, root / "shipped" / "tiny-base", weights=INT8_ROWS, extra=extra)
    return base, root / "shipped" / "tiny-base", other
