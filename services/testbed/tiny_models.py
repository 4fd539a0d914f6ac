"""Tiny random-weight Llama / Qwen2 checkpoints (with a byte-level tokenizer) for tests and checks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# Special tokens plus the 256 byte-level symbols.
TOKENIZER_VOCAB_SIZE = 3 + 256
CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def make_tiny_model(
    path: Path,
    *,
    family: str = "llama",
    num_layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 320,
    seed: int = 0,
    tie: bool = False,
    rope_llama3: bool = False,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Save a deterministic random float32 model plus tokenizer into ``path`` and return it.

    ``extra_config`` adds or overrides Hugging Face config fields (e.g. ``attention_bias``).
    """
    if vocab < TOKENIZER_VOCAB_SIZE:
        raise ValueError(f"vocab must hold the {TOKENIZER_VOCAB_SIZE} tokenizer entries, got {vocab}")
    path = Path(path)
    if rope_llama3:
        # A short original context makes the low-, medium- and high-frequency branches all occur.
        rope = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        }
    else:
        rope = {"rope_type": "default", "rope_theta": 10000.0}
    fields: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        # Not a multiple of `hidden`, so transposed MLP weights cannot go unnoticed.
        "intermediate_size": 2 * hidden + 32,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_parameters": rope,
        "tie_word_embeddings": tie,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    fields.update(extra_config or {})
    config = AutoConfig.for_model(family, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize(model, seed)
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = EOS_ID
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


def make_tiny_pair(root: Path, family: str = "llama", seed: int = 0) -> tuple[Path, Path]:
    """A 4-layer base and a 2-layer draft sharing tokenizer and vocabulary, under ``root``."""
    root = Path(root)
    base = make_tiny_model(root / "base", family=family, num_layers=4, seed=seed)
    draft = make_tiny_model(root / "draft", family=family, num_layers=2, seed=seed + 1)
    return base, draft


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer without merges: ``<unk>``=0, ``<s>``=1 (bos), ``</s>``=2 (eos), then bytes."""
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([UNK, BOS, EOS, *symbols])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    core.add_special_tokens([UNK, BOS, EOS])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, bos_token=BOS, eos_token=EOS, chat_template=CHAT_TEMPLATE
    )


def _randomize(model: torch.nn.Module, seed: int) -> None:
    # Hugging Face zero-initialises biases and sets norms to one, which would hide a missing
    # bias or norm weight; draw everything so activations stay near unit scale instead.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.1 * noise)
            elif "embed_tokens" in name:
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise / math.sqrt(param.shape[-1]))


def make_perturbed_copy(source: Path, path: Path, *, noise: float, seed: int = 0) -> Path:
    """A draft that agrees with ``source`` often but not always: its weights plus relative noise."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(noise * param.abs().mean() * torch.randn(param.shape, generator=gen))
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path
