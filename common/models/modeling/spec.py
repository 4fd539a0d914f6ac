"""Architecture description of a Llama / Qwen2 checkpoint, parsed from its ``config.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.models.modeling.errors import UnsupportedModelError

SUPPORTED_FAMILIES = ("llama", "qwen2")
DEFAULT_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Parameters of the ``llama3`` RoPE frequency scaling (Llama 3.1+)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build and run a decoder-only Llama / Qwen2 model."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Llama3RopeScaling | None
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    max_position_embeddings: int
    torch_dtype: str | None

    @property
    def rope_type(self) -> str:
        """``"llama3"`` when frequency scaling is configured, else ``"default"``."""
        return "default" if self.rope_scaling is None else "llama3"

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], generation_config: Mapping[str, Any] | None = None
    ) -> ModelSpec:
        """Parse a Hugging Face ``config.json`` mapping (plus optional ``generation_config.json``)."""
        family = config.get("model_type")
        if family not in SUPPORTED_FAMILIES:
            raise UnsupportedModelError(
                f"unsupported model_type {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}"
            )
        hidden_act = config.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise UnsupportedModelError(f"unsupported hidden_act {hidden_act!r}; only 'silu' is implemented")
        _reject_sliding_window(config)

        hidden_size = _int(config, "hidden_size")
        num_heads = _int(config, "num_attention_heads")
        num_kv_heads = int(config.get("num_key_value_heads") or num_heads)
        head_dim = config.get("head_dim") or hidden_size // num_heads
        if num_heads % num_kv_heads != 0:
            raise UnsupportedModelError(
                f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv_heads}"
            )
        max_positions = _int(config, "max_position_embeddings")
        rope_theta, rope_scaling = _parse_rope(config, max_positions)

        if family == "qwen2":
            # Qwen2 hard-codes biases on q/k/v only, whatever the config says.
            qkv_bias, o_bias, mlp_bias = True, False, False
        else:
            attention_bias = bool(config.get("attention_bias", False))
            qkv_bias, o_bias, mlp_bias = attention_bias, attention_bias, bool(config.get("mlp_bias", False))

        eos = _token_ids(config.get("eos_token_id"))
        if generation_config is not None:
            eos += _token_ids(generation_config.get("eos_token_id"))
        bos = config.get("bos_token_id")
        if bos is None and generation_config is not None:
            bos = generation_config.get("bos_token_id")
        dtype = config.get("dtype") or config.get("torch_dtype")

        return cls(
            family=family,
            vocab_size=_int(config, "vocab_size"),
            hidden_size=hidden_size,
            intermediate_size=_int(config, "intermediate_size"),
            num_layers=_int(config, "num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=int(head_dim),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            eos_token_ids=tuple(dict.fromkeys(eos)),
            bos_token_id=None if bos is None else int(bos),
            max_position_embeddings=max_positions,
            torch_dtype=None if dtype is None else str(dtype),
        )


def load_model_spec(model_dir: Path) -> ModelSpec:
    """Read ``config.json`` (and ``generation_config.json`` if present) from a model folder."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise UnsupportedModelError(f"no config.json in {model_dir}")
    config = _read_json(config_path)
    generation_path = model_dir / "generation_config.json"
    generation = _read_json(generation_path) if generation_path.is_file() else None
    return ModelSpec.from_config(config, generation)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{path} does not hold a JSON object")
    return data


def _int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnsupportedModelError(f"config.json field {key!r} must be a positive integer, got {value!r}")
    return value


def _token_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        return list(value)
    raise UnsupportedModelError(f"eos_token_id must be an int, a list of ints or null, got {value!r}")


def _reject_sliding_window(config: Mapping[str, Any]) -> None:
    if config.get("use_sliding_window"):
        raise UnsupportedModelError("sliding-window attention (use_sliding_window: true) is not supported")
    layer_types = config.get("layer_types") or []
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other:
        raise UnsupportedModelError(f"unsupported layer_types {other}; only 'full_attention' is implemented")


def _parse_rope(config: Mapping[str, Any], max_positions: int) -> tuple[float, Llama3RopeScaling | None]:
    # transformers >= 5 writes `rope_parameters` (theta included); older configs use
    # `rope_theta` plus an optional `rope_scaling` dict whose type key is `type` or `rope_type`.
    params = config.get("rope_parameters")
    if params is None:
        params = config.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise UnsupportedModelError(f"rope parameters must be a JSON object, got {params!r}")
    if params and all(isinstance(v, Mapping) for v in params.values()):
        raise UnsupportedModelError("per-layer-type rope parameters are not supported")
    theta = float(params.get("rope_theta") or config.get("rope_theta") or DEFAULT_ROPE_THETA)
    partial = float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    if partial != 1.0:
        raise UnsupportedModelError(f"partial_rotary_factor={partial} is not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise UnsupportedModelError(f"unsupported rope_type {rope_type!r}; supported: 'default', 'llama3'")
    try:
        scaling = Llama3RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            # Same fallback as transformers when the field is absent.
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings") or max_positions
            ),
        )
    except KeyError as exc:
        raise UnsupportedModelError(f"llama3 rope scaling lacks {exc.args[0]!r}") from exc
    if scaling.high_freq_factor <= scaling.low_freq_factor or not math.isfinite(scaling.factor):
        raise UnsupportedModelError(f"invalid llama3 rope scaling {scaling}")
    return theta, scaling
