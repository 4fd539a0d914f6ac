"""A head drafting on a board: which head, what the drafter's board holds beside it, and its memory.

A head (``common.speculation.heads``) reads the base's own embedding and lm_head. On a board the drafter
gets a slice of the base holding only those, at the dtype they are stored in (the head checks the base by
a sha256 of the stored embedding, so a cast slice would be refused), and the head folder itself (its
config and weight files), stored and shipped like a slice under its content hash.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common.cluster.inventory import SHIPPED_HEAD
from common.cluster.partition import EMBED_NAME, HEAD_NAME, LayerCosts
from common.cluster.slices import SliceFolder, build_slice, store_by_digest
from common.models.dtypes import MODEL_DTYPES
from services.launcher import LaunchError

HEAD_FILES = ("config.json", "*.safetensors")  # what loading a head reads (common.speculation.heads.model)


def resolve_head(ref: str, base_dir: Path) -> Path:
    """``shipped``: the head shipped for the base (found by its fingerprint); else a head folder, or a name in
    the heads cache. Raises ``LaunchError`` in one line when there is none, or it is for another base."""
    from common.speculation.heads.config import HeadMismatchError
    from common.speculation.heads.model import check_head
    from common.speculation.heads.shipped import head_for_base
    from common.speculation.heads.store import heads_dir

    if ref == SHIPPED_HEAD:
        found = head_for_base(base_dir)
        if found is None:
            raise LaunchError(f"models.draft_head = \"{SHIPPED_HEAD}\": no head ships for the base {base_dir.name}; "
                              f"name a head folder, or a draft model with models.draft")
        return found.resolve()
    path = Path(ref).expanduser()
    path = path if path.is_dir() else heads_dir() / ref
    try:
        check_head(path, base_dir)
    except (HeadMismatchError, OSError) as exc:
        raise LaunchError(f"models.draft_head {ref}: {exc}") from exc
    return path.resolve()


def head_costs(head_dir: Path, base: LayerCosts) -> LayerCosts:
    """The drafter's memory as a one-layer model: the head's weights at the cluster dtype (every stored
    element counted once, int8 ones too), the base's embedding and lm_head, one layer of KV cache."""
    from safetensors import safe_open

    elements = 0
    for path in sorted(head_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                shape = handle.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                elements += count
    return LayerCosts(
        dtype_bytes=base.dtype_bytes, layer_bytes=(elements * base.dtype_bytes,), embedding_bytes=base.embedding_bytes,
        head_bytes=base.head_bytes, layer_compute=(1.0,), head_compute=base.head_compute,
        kv_bytes_per_token=base.kv_bytes_per_token,
    )


def head_drafter_parts(base_dir: Path, head_dir: Path, store: Path) -> tuple[SliceFolder, SliceFolder]:
    """The drafter's two folders: the base's embedding (and lm_head, when not tied) as stored, then the head."""
    from safetensors import safe_open

    from common.models.modeling import load_model_spec
    from common.models.modeling.loader import _checkpoint_files

    files = _checkpoint_files(base_dir)
    tensors = [EMBED_NAME] + ([HEAD_NAME] if HEAD_NAME in files and not load_model_spec(base_dir).tie_word_embeddings
                              else [])
    with safe_open(str(files[EMBED_NAME]), framework="pt", device="cpu") as handle:
        stored = str(handle.get_slice(EMBED_NAME).get_dtype())
    dtype = {"BF16": "bfloat16", "F32": "float32"}.get(stored)
    if dtype not in MODEL_DTYPES:
        raise LaunchError(f"a head drafts only for a base stored in bfloat16 or float32; {base_dir.name} stores "
                          f"its embedding as {stored}")
    return build_slice(base_dir, tensors, dtype, store), store_folder(head_dir, store)


def store_folder(folder: Path, store: Path) -> SliceFolder:
    """A copy of ``folder``'s head files in ``store``, named by its content hash (as a slice is)."""
    def write(staging: Path) -> None:
        for pattern in HEAD_FILES:
            for path in folder.glob(pattern):
                shutil.copyfile(path, staging / path.name)

    return store_by_digest(store, write)
