"""Fixtures for the model store: a private cache root, and a fake catalog model whose conversion is stubbed."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.models import catalog
from common.models import store as model_store
from tests.catalog.fakes import FakeConverter, FakeModel, make_catalog_model


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache root, never the user's."""
    root = tmp_path / "flowring-home"
    monkeypatch.setenv("FLOWRING_HOME", str(root))
    return root


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    """A catalog of one model, 'fake-model' (alias 'fake'), made of three part files; nothing is installed."""
    chunks = [bytes([i]) * size for i, size in enumerate((2500, 1, 3333), start=1)]
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        part = tmp_path / "site" / f"fake_part{i}" / "data" / f"part{i:02d}.bin"
        part.parent.mkdir(parents=True)
        part.write_bytes(chunk)
        parts.append(part)
    joined = b"".join(chunks)
    model = make_catalog_model("fake-model", joined, len(parts))
    converter = FakeConverter()
    monkeypatch.setattr(catalog, "MODELS", (model,))
    monkeypatch.setattr(catalog, "ALIASES", {"fake": ("fake-model",)})
    monkeypatch.setattr(model_store, "ensure_installed", lambda model, progress=None: 0)
    monkeypatch.setattr(model_store, "locate_parts", lambda model: list(parts))
    monkeypatch.setattr(model_store, "_convert", converter)
    # Small blocks so the join loop runs many times over tiny parts.
    monkeypatch.setattr(model_store, "BLOCK", 1024)
    return FakeModel(model, parts, joined, converter)
