"""Per-service weight slices: the model folder a service needs, holding only that service's tensors.

A slice folder has the model's config, tokenizer and generation files plus ``model.safetensors`` with
the service's tensors (original names, cast to the cluster dtype). It is named by its *content hash*
(sha256 over every file's name and bytes), so a board that already holds a hash holds exactly that
slice. :func:`service_tensors` is pure; :func:`build_slice` writes the folder once into a local store
and remembers which hash a recipe (checkpoint files, tensor names, dtype) produced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.cluster.partition import EMBED_NAME, HEAD_NAME, LAYER_PREFIX, NORM_NAME
from common.models.dtypes import MODEL_DTYPES

WEIGHTS_FILE = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".gguf", ".bin", ".pt")


@dataclass(frozen=True)
class SliceFolder:
    """A built slice: its folder in the local store, its content hash and its size on disk."""

    path: Path
    digest: str
    size_bytes: int


def service_tensors(
    service: str, names: Sequence[str], *, layers: tuple[int, int] = (0, 0), first_stage: bool = False,
    tied: bool = False,
) -> tuple[str, ...]:
    """Checkpoint tensors service ``service`` loads, sorted. The scheduler loads none (tokenizer only),
    the drafter its whole model, a stage its layers (the first also the embedding), the verifier the final
    norm and the head (the embedding matrix when the model ties them or has no ``lm_head``)."""
    if service == "scheduler":
        return ()
    if service == "drafter":
        return tuple(sorted(names))
    if service == "verifier":
        head = HEAD_NAME if HEAD_NAME in names and not tied else EMBED_NAME
        return tuple(sorted({NORM_NAME, head}))
    first, last = layers
    chosen = {n for n in names if n.startswith(LAYER_PREFIX) and first <= _layer_index(n) < last}
    if first_stage:
        chosen.add(EMBED_NAME)
    return tuple(sorted(chosen))


def build_slice(model_dir: Path, tensors: Sequence[str], dtype: str, store: Path) -> SliceFolder:
    """The slice of ``model_dir`` holding ``tensors`` at ``dtype``, built into ``store`` unless already there."""
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, not {dtype}")
    model_dir = Path(model_dir).resolve()
    recipe = _recipe_key(model_dir, tensors, dtype)
    recipe_file = store / "recipes" / f"{recipe}.json"
    if recipe_file.is_file():
        digest = json.loads(recipe_file.read_text())["digest"]
        if (store / digest).is_dir():
            return SliceFolder(store / digest, digest, _size(store / digest))
    built = store_by_digest(store, lambda staging: _write_folder(model_dir, tensors, dtype, staging))
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(json.dumps({"digest": built.digest, "model": str(model_dir), "tensors": len(tensors)}))
    return built


def store_by_digest(store: Path, write: Callable[[Path], None]) -> SliceFolder:
    """The folder ``write`` fills, kept in ``store`` under its content hash (an existing equal one is reused)."""
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=store))
    try:
        write(staging)
        digest = folder_digest(staging)
        final = store / digest
        if final.is_dir():
            shutil.rmtree(staging)
        else:
            staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave a half-written folder behind
        raise
    return SliceFolder(final, digest, _size(final))


def folder_digest(folder: Path) -> str:
    """sha256 over every file's name and content, in name order."""
    total = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        total.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            total.update(hashlib.file_digest(handle, "sha256").digest())
    return total.hexdigest()


def _write_folder(model_dir: Path, tensors: Sequence[str], dtype: str, out: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from common.models.modeling.loader import _checkpoint_files

    for path in model_dir.iterdir():
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copyfile(path, out / path.name)
    if not tensors:
        return
    files = _checkpoint_files(model_dir)
    target = getattr(torch, dtype)
    chosen: dict[str, torch.Tensor] = {}
    for name in tensors:
        with safe_open(str(files[name]), framework="pt", device="cpu") as handle:
            tensor = handle.get_tensor(name)
        chosen[name] = tensor.to(target).contiguous() if tensor.is_floating_point() else tensor
    save_file(chosen, str(out / WEIGHTS_FILE), metadata={"format": "pt"})


def _recipe_key(model_dir: Path, tensors: Sequence[str], dtype: str) -> str:
    """Identifies a slice without reading weights: the folder's files (name, size, mtime), tensors, dtype."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_dir.iterdir() if p.is_file())
    blob = json.dumps([str(model_dir), files, list(tensors), dtype])
    return hashlib.sha256(blob.encode()).hexdigest()


def _layer_index(name: str) -> int:
    return int(name[len(LAYER_PREFIX):].split(".", 1)[0])


def _size(folder: Path) -> int:
    return sum(os.path.getsize(p) for p in folder.iterdir() if p.is_file())
