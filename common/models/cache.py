"""The model cache's folders: root, manifests, locks, work folders, listing."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.models.errors import DiskSpaceError
from common.models.packages import _installed_version

MANIFEST = "flowring.json"


MANIFEST_VERSION = 1


@dataclass(frozen=True)
class CachedModel:
    """A complete model folder in the cache."""

    name: str
    path: Path
    size_bytes: int
    dtype: str
    source: str  # human-readable origin: pinned packages or the GGUF file converted
    sha256: str  # of the source GGUF


def cache_root() -> Path:
    """The cache root: $FLOWRING_HOME, else ~/.cache/flowring."""
    env = os.environ.get("FLOWRING_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flowring"


def _models_dir() -> Path:
    return cache_root() / "models"


def _read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(folder: Path) -> bool:
    """A manifest exists and every file it lists is present with its recorded size."""
    if folder.name.endswith(".partial") or not folder.is_dir():
        return False
    manifest = _read_manifest(folder)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return False
    for rel, size in manifest["files"].items():
        path = folder / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _write_manifest(folder: Path, *, name: str, source: dict, dtype: str) -> None:
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "source": source,
        "dtype": dtype,
        "size_bytes": sum(files.values()),
        "files": files,
        "converter": {dist: _installed_version(dist) for dist in ("transformers", "torch", "gguf")},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)


def _folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _require_free(where: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(where).free
    if free < needed:
        raise DiskSpaceError(f"{what} needs ~{_gib(needed)} free in {where}, only {_gib(free)} left")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


@contextmanager
def _disk_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError(f"disk full while {what}") from exc
        raise


@contextmanager
def _locked(name: str) -> Iterator[None]:
    # Without the lock a second pull would delete the first one's .partial folder as stale.
    _models_dir().mkdir(parents=True, exist_ok=True)
    with open(_models_dir() / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _work_dir(name: str) -> Iterator[Path]:
    """A fresh <name>.partial folder, removed however the block ends."""
    work = _models_dir() / f"{name}.partial"
    shutil.rmtree(work, ignore_errors=True)  # left by a killed pull
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install_folder(built: Path, dest: Path) -> None:
    """Move a finished folder to `dest`, replacing whatever is there; each rename is atomic."""
    old = dest.with_name(dest.name + ".old.partial")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.rename(dest, old)
    os.rename(built, dest)
    shutil.rmtree(old, ignore_errors=True)


def list_cached() -> list[CachedModel]:
    """Every complete model folder in the cache, sorted by name."""
    root = _models_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if not _is_complete(folder):
            continue
        manifest = _read_manifest(folder) or {}
        source = manifest.get("source", {})
        found.append(
            CachedModel(
                name=str(manifest.get("name", folder.name)),
                path=folder,
                size_bytes=_folder_size(folder),
                dtype=str(manifest.get("dtype", "?")),
                source=str(source.get("description", "?")),
                sha256=str(source.get("sha256", "")),
            )
        )
    return found
