"""Test doubles for the model store: a recording progress sink, a stub converter, fake catalog entries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.models import catalog
from common.models import store as model_store
from common.models.catalog import CatalogModel, PartSource


@dataclass
class RecordingSink:
    """A ProgressSink that records every call."""

    calls: list[tuple] = field(default_factory=list)

    def start(self, total: int | None, label: str) -> None:
        self.calls.append(("start", total, label))

    def advance(self, n: int) -> None:
        self.calls.append(("advance", n))

    def finish(self) -> None:
        self.calls.append(("finish",))

    def advanced_during(self, label_part: str) -> int:
        """Sum of advances between the start whose label contains `label_part` and its finish."""
        total, inside = 0, False
        for call in self.calls:
            if call[0] == "start":
                inside = label_part in call[2]
            elif call[0] == "advance" and inside:
                total += call[1]
            elif call[0] == "finish":
                inside = False
        return total


@dataclass
class FakeConverter:
    """Stands in for common.models.modeling.convert: writes a small HF-shaped folder holding the GGUF's bytes."""

    seen: list[bytes] = field(default_factory=list)
    fail: Callable[[Path], None] | None = None

    def __call__(self, gguf: Path, out: Path, dtype: str, progress: model_store.ProgressSink) -> None:
        data = gguf.read_bytes()
        self.seen.append(data)
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        if self.fail is not None:
            self.fail(out)
        (out / "model.safetensors").write_bytes(data)
        (out / "tokenizer.json").write_text("{}")


@dataclass
class FakeModel:
    model: CatalogModel
    parts: list[Path]
    joined: bytes
    converter: FakeConverter


def make_catalog_model(name: str, joined: bytes, n_parts: int, **overrides: object) -> CatalogModel:
    fields = {
        "name": name,
        "description": "fake model for tests",
        "architecture": "llama",
        "role": "small",
        "parts": tuple(
            PartSource(f"fake-part{i}==1.0", f"fake_part{i}", f"data/part{i:02d}.bin")
            for i in range(1, n_parts + 1)
        ),
        "gguf_size": len(joined),
        "gguf_sha256": hashlib.sha256(joined).hexdigest(),
        "quantization": "Q4_1",
    }
    fields.update(overrides)
    return CatalogModel(**fields)


def use_model(monkeypatch: pytest.MonkeyPatch, model: CatalogModel) -> None:
    """Replace the fake catalog's model with `model` (same parts)."""
    monkeypatch.setattr(catalog, "MODELS", (model,))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache root (FLOWRING_HOME), never the user's."""
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
