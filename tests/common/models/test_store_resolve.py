"""resolve and list_cached: catalog names, local folders, GGUF files, unknown references."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.models import cache as model_cache
from common.models import store as model_store
from common.models.catalog import UnknownModelError
from common.models.errors import ModelNotPulledError
from tests.support.fake_catalog import FakeModel


def test_folder_with_config_resolves_to_itself(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert model_store.resolve(str(folder)) == folder.resolve()


def test_folder_without_config_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="config.json"):
        model_store.resolve(str(tmp_path))


def test_unknown_reference() -> None:
    with pytest.raises(UnknownModelError, match="not a catalog model"):
        model_store.resolve("definitely-not-a-model")


def test_catalog_name_not_pulled_says_how_to_pull() -> None:
    with pytest.raises(ModelNotPulledError, match="run: flowring models pull smollm2-135m"):
        model_store.resolve("smollm2-135m")


def test_alias_of_several_models_is_refused() -> None:
    with pytest.raises(UnknownModelError, match="several models"):
        model_store.resolve("qwen-coder")


def test_alias_of_one_model_resolves_to_it(fake_model: FakeModel, home: Path) -> None:
    model_store.pull("fake")
    assert model_store.resolve("fake") == home / "models" / "fake-model"


def test_pulled_name_resolves_and_lists(fake_model: FakeModel, home: Path) -> None:
    assert model_cache.list_cached() == []
    model_store.pull("fake")
    assert model_store.resolve("fake-model") == home / "models" / "fake-model"
    (cached,) = model_cache.list_cached()
    assert cached.name == "fake-model"
    assert cached.path == home / "models" / "fake-model"
    assert cached.dtype == "bfloat16"
    assert cached.sha256 == fake_model.model.gguf_sha256
    assert cached.size_bytes >= len(fake_model.joined)
    assert "fake-part1..3==1.0" in cached.source


def test_gguf_file_is_converted_once(fake_model: FakeModel, tmp_path: Path, home: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    first = model_store.resolve(str(gguf))
    assert first.parent == home / "models" and first.name.startswith("gguf-")
    assert (first / "config.json").is_file()
    assert model_store.resolve(str(gguf)) == first
    assert len(fake_model.converter.seen) == 1
    assert [m.name for m in model_cache.list_cached()] == [first.name]


def test_other_files_are_unknown(tmp_path: Path) -> None:
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(UnknownModelError):
        model_store.resolve(str(other))


def test_cache_root_defaults_to_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWRING_HOME")
    assert model_cache.cache_root() == Path.home() / ".cache" / "flowring"
