"""Pure-compute Llama / Qwen2 model slices with a controllable KV cache and tree attention."""

from common.models.modeling.errors import (
    CheckpointError,
    ModelingError,
    TokenizerMismatchError,
    UnsupportedModelError,
)
from common.models.modeling.kv_cache import KVCache
from common.models.modeling.loader import checkpoint_tensor_names, load_slice
from common.models.modeling.slice import ModelSlice, causal_attend, rope_inv_freq
from common.models.modeling.spec import Llama3RopeScaling, ModelSpec, load_model_spec
from common.models.modeling.tokenizer import check_same_tokenizer, encode_prompt, load_tokenizer

__all__ = [
    "CheckpointError",
    "KVCache",
    "Llama3RopeScaling",
    "ModelSlice",
    "ModelSpec",
    "ModelingError",
    "TokenizerMismatchError",
    "UnsupportedModelError",
    "causal_attend",
    "check_same_tokenizer",
    "checkpoint_tensor_names",
    "encode_prompt",
    "load_model_spec",
    "load_slice",
    "load_tokenizer",
    "rope_inv_freq",
]
