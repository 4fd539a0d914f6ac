"""Convert a GGUF file once into a plain Hugging Face safetensors folder.

A GGUF load dequantizes every weight on every load (tens of seconds for a 1.5B model); the converted folder
loads fast with plain `from_pretrained(folder)` and lets a pipeline stage read only its own layers' tensors.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.models.errors import ConversionError, PackageInstallError, ProgressSink

_NEEDED = ("gguf", "accelerate")


@dataclass(frozen=True)
class GgufTokenInfo:
    """Special token ids and the chat template, as the GGUF metadata states them."""

    bos_token_id: int | None
    eos_token_id: int | None
    eot_token_id: int | None
    pad_token_id: int | None
    chat_template: str | None


def read_token_info(gguf_path: Path) -> GgufTokenInfo:
    """The GGUF file's special token ids and chat template (None where the file has none)."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields

    def value(key: str) -> object | None:
        field = fields.get(key)
        return None if field is None else field.contents()

    def token_id(key: str) -> int | None:
        found = value(key)
        return int(found) if isinstance(found, int) else None

    template = value("tokenizer.chat_template")
    return GgufTokenInfo(
        bos_token_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id=token_id("tokenizer.ggml.eos_token_id"),
        eot_token_id=token_id("tokenizer.ggml.eot_token_id"),
        pad_token_id=token_id("tokenizer.ggml.padding_token_id"),
        chat_template=template if isinstance(template, str) else None,
    )


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    # transformers draws its own tqdm bars while dequantizing and saving; they would tear the caller's
    # progress display. Its GGUF loader calls tqdm directly, past the progress-bar switch, so that name is
    # swapped for the duration.
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _parsed_once() -> Iterator[None]:
    # One conversion reads the GGUF four times (token info, then transformers' config, tokenizer and weights
    # loaders, each building a gguf.GGUFReader, which parses every metadata field in Python: seconds for a
    # 49k-token vocabulary), and transformers builds the same tensor-name map once per module (hundreds).
    # Both are pure reads of one read-only file, so for the duration each is built once per argument.
    import gguf

    readers: dict[str, Any] = {}
    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path: Path | str, mode: Any = "r") -> Any:
        key = f"{Path(path).resolve()} {mode}"
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    # transformers imports both names from gguf at call time, so swapping the module's attributes reaches it.
    setattr(gguf, "GGUFReader", reader)  # noqa: B010 (mypy refuses a plain assignment to a class name)
    setattr(gguf, "get_tensor_name_map", functools.cache(real_name_map))  # noqa: B010
    try:
        yield
    finally:
        setattr(gguf, "GGUFReader", real_reader)  # noqa: B010
        setattr(gguf, "get_tensor_name_map", real_name_map)  # noqa: B010


def _dequantize_option() -> dict[str, object]:
    """Ask for dense weights: recent transformers may otherwise keep GGUF blocks packed in memory."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF weights
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _strip_quantization(model: torch.nn.Module) -> None:
    """Forget that the weights came from GGUF: save_pretrained refuses quantized models, and a saved
    quantization_config would make from_pretrained look for the GGUF again."""
    for attr in ("hf_quantizer", "quantization_method", "_weight_conversions"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False  # type: ignore[assignment]  # a transformers flag; torch types Module attributes as Tensor | Module


def _fix_special_tokens(model: torch.nn.Module, info: GgufTokenInfo) -> None:
    """Make config and generation config carry the GGUF's bos/eos/pad ids; generation also stops at eot."""
    # transformers' PretrainedConfig and GenerationConfig; torch types Module attributes as Tensor | Module.
    config: Any = model.config
    generation: Any = model.generation_config
    if info.bos_token_id is not None:
        config.bos_token_id = generation.bos_token_id = info.bos_token_id
    if info.pad_token_id is not None:
        config.pad_token_id = generation.pad_token_id = info.pad_token_id
    if info.eos_token_id is not None:
        config.eos_token_id = info.eos_token_id
        stops = [info.eos_token_id]
        if info.eot_token_id is not None and info.eot_token_id != info.eos_token_id:
            stops.append(info.eot_token_id)
        generation.eos_token_id = stops[0] if len(stops) == 1 else stops


def convert_gguf(
    gguf_path: Path | str,
    out_dir: Path | str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    progress: ProgressSink | None = None,
) -> None:
    """Write `out_dir` as a safetensors Hugging Face folder (weights in `dtype`, tokenizer with chat template,
    generation config) equivalent to loading `gguf_path` with `gguf_file=`."""
    missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise PackageInstallError(
            f"converting GGUF needs {', '.join(missing)}: pip install 'flowring[gguf]' (or run flowring models pull)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    if progress is not None:
        progress.start(4, f"convert {gguf_path.name}")  # metadata, tokenizer, weights, save
    try:
        with _parsed_once(), _quiet_transformers():
            info = read_token_info(gguf_path)
            _advance(progress)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            _advance(progress)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=dtype, local_files_only=True, **_dequantize_option()
            )
            _advance(progress)
            packed = sorted({str(p.dtype) for p in model.parameters() if p.dtype != dtype})
            if packed:
                raise ConversionError(f"{name}: weights stayed {', '.join(packed)} instead of {dtype}")
            _strip_quantization(model)
            _fix_special_tokens(model, info)
            if not tokenizer.chat_template and info.chat_template:
                tokenizer.chat_template = info.chat_template
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
        _advance(progress)
    finally:
        if progress is not None:
            progress.finish()


def _advance(progress: ProgressSink | None) -> None:
    if progress is not None:
        progress.advance(1)
