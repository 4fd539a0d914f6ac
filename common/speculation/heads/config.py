"""A draft head's configuration and the fingerprint of the base model it was trained for.

``config.json`` in a head folder records the head's own sizes and the base's architecture fields plus
a sha256 of the base's embedding matrix, so a head is never paired with a base it was not trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.models.modeling import ModelSpec
from common.models.modeling.errors import ModelingError

CONFIG_FILE = "config.json"
FORMAT = "flowring-eagle-head/1"
# Architecture fields the head shares with its base: its layer is built from them.
BASE_FIELDS = (
    "family", "vocab_size", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "rms_norm_eps",
    "rope_theta", "qkv_bias", "o_bias", "mlp_bias",
)


class HeadMismatchError(ModelingError, ValueError):
    """A head folder that is malformed or was trained for another base model."""


@dataclass(frozen=True)
class BaseFingerprint:
    """What identifies the base a head reads features from and shares embedding and lm_head with."""

    fields: tuple[tuple[str, Any], ...]  # BASE_FIELDS with their values
    embedding_sha256: str


@dataclass(frozen=True)
class HeadConfig:
    base: BaseFingerprint
    intermediate_size: int  # the head layer's MLP width
    draft_vocab_size: int  # lm_head rows the head drafts over (== vocab_size: the full vocabulary)
    base_name: str = ""  # for people: the base it was trained from
    weights: str = "bfloat16"  # how the tensors are stored (common.speculation.heads.packing.WEIGHT_FORMATS)
    weight_files: tuple[tuple[str, str], ...] = ()  # (file name, sha256) of every weight file; () : unchecked

    def layer_spec(self, base_spec: ModelSpec) -> ModelSpec:
        """The base's spec narrowed to one decoder layer of the head's MLP width."""
        return dataclasses.replace(base_spec, intermediate_size=self.intermediate_size, num_layers=1)

    def to_json(self, extra: dict[str, Any] | None = None) -> str:
        body = {
            "format": FORMAT,
            "base_name": self.base_name,
            "base": dict(self.base.fields),
            "base_embedding_sha256": self.base.embedding_sha256,
            "intermediate_size": self.intermediate_size,
            "draft_vocab_size": self.draft_vocab_size,
            "weights": self.weights,
            "weight_files": dict(self.weight_files),
        }
        return json.dumps(body | (extra or {}), indent=2) + "\n"

    @classmethod
    def read(cls, head_dir: Path) -> HeadConfig:
        path = Path(head_dir) / CONFIG_FILE
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            if body.get("format") != FORMAT:
                raise HeadMismatchError(f"{path} is not a flowring head config (format {body.get('format')!r})")
            fields = tuple((name, body["base"][name]) for name in BASE_FIELDS)
            return cls(
                base=BaseFingerprint(fields, str(body["base_embedding_sha256"])),
                intermediate_size=int(body["intermediate_size"]),
                draft_vocab_size=int(body["draft_vocab_size"]),
                base_name=str(body.get("base_name", "")),
                weights=str(body.get("weights", "bfloat16")),
                weight_files=tuple(sorted((str(k), str(v)) for k, v in body.get("weight_files", {}).items())),
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise HeadMismatchError(f"cannot read head config {path}: {exc}") from exc


def base_fingerprint(spec: ModelSpec, embedding: torch.Tensor) -> BaseFingerprint:
    """Architecture fields plus a sha256 of the embedding's bytes as stored in the checkpoint."""
    fields = tuple((name, getattr(spec, name)) for name in BASE_FIELDS)
    raw = embedding.detach().contiguous().cpu().view(torch.uint8).numpy()
    return BaseFingerprint(fields, hashlib.sha256(raw.data).hexdigest())


def check_base(expected: BaseFingerprint, actual: BaseFingerprint, head_dir: Path, base_dir: Path) -> None:
    """Raise ``HeadMismatchError`` in one line unless the base is the one the head was trained for."""
    differing = [
        f"{name} {want!r} vs {got!r}"
        for (name, want), (_, got) in zip(expected.fields, actual.fields, strict=True)
        if want != got
    ]
    if differing:
        raise HeadMismatchError(f"head {head_dir} was trained for another base than {base_dir}: {', '.join(differing)}")
    if expected.embedding_sha256 != actual.embedding_sha256:
        raise HeadMismatchError(
            f"head {head_dir} was trained for another base than {base_dir}: the embedding matrices differ"
        )
