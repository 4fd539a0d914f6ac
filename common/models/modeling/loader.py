"""Build a ``ModelSlice`` from a local safetensors checkpoint, reading only its own tensors."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from common.models.modeling.errors import CheckpointError
from common.models.modeling.slice import ModelSlice
from common.models.modeling.spec import load_model_spec

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
EMBED_NAME = "model.embed_tokens.weight"
HEAD_NAME = "lm_head.weight"


def checkpoint_tensor_names(model_dir: Path) -> list[str]:
    """Sorted names of every tensor in the folder's safetensors checkpoint."""
    return sorted(_checkpoint_files(Path(model_dir)))


def read_embedding_and_head(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding and lm_head matrices as stored (CPU, checkpoint dtype); one object when tied."""
    model_dir = Path(model_dir)
    spec = load_model_spec(model_dir)
    files = _checkpoint_files(model_dir)
    if EMBED_NAME not in files:
        raise CheckpointError(f"checkpoint in {model_dir} lacks {EMBED_NAME}")
    tied = spec.tie_word_embeddings or HEAD_NAME not in files
    try:
        with safe_open(str(files[EMBED_NAME]), framework="pt", device="cpu") as handle:
            embedding = handle.get_tensor(EMBED_NAME)
        if tied:
            return embedding, embedding
        with safe_open(str(files[HEAD_NAME]), framework="pt", device="cpu") as handle:
            return embedding, handle.get_tensor(HEAD_NAME)
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read checkpoint in {model_dir}: {exc}") from exc


def load_slice(
    model_dir: Path,
    layer_range: tuple[int, int] | None,
    *,
    with_embedding: bool,
    with_head: bool,
    dtype: torch.dtype,
    device: str = "cpu",
    row_invariant: bool = True,
) -> ModelSlice:
    """Load layers ``[first, last)`` (``None``: all) plus the requested ends of a model.

    ``row_invariant``: see :class:`ModelSlice`.

    An empty range is allowed only with an end, e.g. ``(n, n)`` with the head for a verifier.

    Tensors are read one at a time and copied into preallocated parameters, so peak memory
    stays near the slice's own size. The names read are recorded in ``loaded_tensor_names``.
    """
    model_dir = Path(model_dir)
    spec = load_model_spec(model_dir)
    if layer_range is None:
        layer_range = (0, spec.num_layers)
    first, last = layer_range
    if not 0 <= first <= last <= spec.num_layers:
        raise CheckpointError(
            f"layer range [{first}, {last}) is not part of the model's [0, {spec.num_layers})"
        )
    if first == last and not (with_embedding or with_head):
        raise CheckpointError(f"empty layer range [{first}, {last}) without embedding or head loads nothing")
    files = _checkpoint_files(model_dir)
    module = ModelSlice(
        spec, (first, last), with_embedding=with_embedding, with_head=with_head, dtype=dtype, device=device,
        row_invariant=row_invariant,
    )
    # Tied models (or checkpoints that omit the head) reuse the embedding matrix as the head.
    head_source = EMBED_NAME if spec.tie_word_embeddings or HEAD_NAME not in files else HEAD_NAME
    plan = {
        param_name: _checkpoint_name(param_name, first, head_source)
        for param_name, _ in module.named_parameters()
    }
    missing = sorted({name for name in plan.values() if name not in files})
    if missing:
        shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        raise CheckpointError(
            f"checkpoint in {model_dir} lacks tensors needed by slice [{first}, {last}): {shown}"
        )

    params = dict(module.named_parameters())
    by_file: dict[Path, list[str]] = defaultdict(list)
    for param_name, name in plan.items():
        by_file[files[name]].append(param_name)
    try:
        for path, param_names in by_file.items():
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for param_name in param_names:
                    _fill(params[param_name], handle.get_tensor(plan[param_name]), plan[param_name])
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read checkpoint in {model_dir}: {exc}") from exc
    module.loaded_tensor_names = tuple(sorted(set(plan.values())))
    return module


def _checkpoint_name(param_name: str, first: int, head_source: str) -> str:
    """Map a ``ModelSlice`` parameter name to the Hugging Face checkpoint tensor name."""
    if param_name == "lm_head.weight":
        return head_source
    if param_name.startswith("layers."):
        _, local, rest = param_name.split(".", 2)
        return f"model.layers.{first + int(local)}.{rest}"
    return f"model.{param_name}"


def _fill(param: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if tensor.shape != param.shape:
        raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(tensor)  # casts to the slice dtype and moves to its device


def _checkpoint_files(model_dir: Path) -> dict[str, Path]:
    """Map every tensor name of the checkpoint to the file holding it (headers only are read)."""
    single = model_dir / SINGLE_FILE
    index = model_dir / INDEX_FILE
    if single.is_file():
        try:
            with safe_open(str(single), framework="pt", device="cpu") as handle:
                return dict.fromkeys(handle.keys(), single)
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"cannot read {single}: {exc}") from exc
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read the weight_map of {index}: {exc}") from exc
        files = {name: model_dir / shard for name, shard in weight_map.items()}
        absent = sorted({p.name for p in files.values() if not p.is_file()})
        if absent:
            raise CheckpointError(f"{index} names missing shard file(s): {', '.join(absent)}")
        return files
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {model_dir}")
