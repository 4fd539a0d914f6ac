"""How a head's tensors are stored: plain (bf16 or float32) or int8 with a scale per row, in shards.

``int8-rows`` stores a matrix ``W [out, in]`` as ``round(W / s)`` in int8 with ``s = max|W[r]| / 127``
per row (float32 ``<name>.scale``); vectors (biases, the norm weight) in bf16; the draft ids in int32.
Loading dequantises to the head's runtime dtype, so drafting costs what a plain head costs. Tensors are
spread over files of at most ``MAX_SHARD_BYTES`` (``head-00001-of-00002.safetensors``): each file stays
under what one transfer carries. A plain head of earlier versions is one ``head.safetensors``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from common.speculation.heads.config import HeadMismatchError

PLAIN_FILE = "head.safetensors"
SHARD_GLOB = "head-*-of-*.safetensors"
MAX_SHARD_BYTES = 15 * 2**20
INT8_ROWS = "int8-rows"
WEIGHT_FORMATS = ("float32", "bfloat16", INT8_ROWS)
SCALE = ".scale"
DRAFT_IDS = "draft_ids"  # int [draft_vocab]: full-vocabulary id of every lm_head row


def encode(state: dict[str, Tensor], weights: str) -> dict[str, Tensor]:
    """The tensors to store for a head's ``state`` in format ``weights`` (one of ``WEIGHT_FORMATS``)."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"head weights must be one of {', '.join(WEIGHT_FORMATS)}, not {weights!r}")
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if name == DRAFT_IDS:
            out[name] = t.to(torch.int32 if weights == INT8_ROWS else torch.int64)
        elif weights != INT8_ROWS:
            out[name] = t.to(getattr(torch, weights))
        elif t.dim() == 2:
            q, scale = quantize_rows(t)
            out[name], out[name + SCALE] = q, scale
        else:
            out[name] = t.to(torch.bfloat16)
    return {name: t.contiguous() for name, t in out.items()}


def decode(stored: dict[str, Tensor], weights: str) -> dict[str, Tensor]:
    """Float32 tensors (the draft ids int64) from what ``encode`` stored."""
    out: dict[str, Tensor] = {}
    for name, t in stored.items():
        if name.endswith(SCALE):
            continue
        if name == DRAFT_IDS:
            out[name] = t.to(torch.int64)
        elif weights == INT8_ROWS and t.dtype == torch.int8:
            scale = stored.get(name + SCALE)
            if scale is None or scale.shape != (t.shape[0],):
                raise HeadMismatchError(f"int8 tensor {name} has no scale per row")
            out[name] = t.float() * scale.float()[:, None]
        else:
            out[name] = t.float()
    return out


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row: ``(q, scale)`` with ``weight ~= q * scale[:, None]``."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def write_shards(tensors: dict[str, Tensor], head_dir: Path, max_bytes: int = MAX_SHARD_BYTES) -> dict[str, str]:
    """Write ``tensors`` in order into shards of at most ``max_bytes`` each; the sha256 of every file."""
    groups: list[dict[str, Tensor]] = [{}]
    used = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        if groups[-1] and used + size > max_bytes:
            groups.append({})
            used = 0
        groups[-1][name] = t
        used += size
    for old in [*head_dir.glob(SHARD_GLOB), head_dir / PLAIN_FILE]:
        old.unlink(missing_ok=True)
    digests = {}
    for i, group in enumerate(groups, start=1):
        name = f"head-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(head_dir / name))
        digests[name] = sha256_file(head_dir / name)
    return digests


def read_shards(head_dir: Path, digests: dict[str, str] | None = None) -> dict[str, Tensor]:
    """Every stored tensor of a head folder (its shards, or the one plain file), checked against ``digests``."""
    files = sorted(head_dir.glob(SHARD_GLOB)) or [head_dir / PLAIN_FILE]
    if digests and sorted(digests) != [f.name for f in files]:
        raise HeadMismatchError(f"{head_dir} holds weight files {[f.name for f in files]}, its config names "
                                f"{sorted(digests)}")
    tensors: dict[str, Tensor] = {}
    for file in files:
        try:
            if digests and sha256_file(file) != digests[file.name]:
                raise HeadMismatchError(f"{file} is corrupt: its sha256 differs from the one in config.json")
            tensors.update(load_file(str(file)))
        except (OSError, SafetensorError) as exc:
            raise HeadMismatchError(f"cannot read {file}: {exc}") from exc
    return tensors


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
