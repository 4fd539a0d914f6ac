"""Tokenizer loading, base/draft compatibility check and prompt encoding."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.models.modeling.errors import CheckpointError, TokenizerMismatchError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SPECIAL_IDS = ("eos_token_id", "bos_token_id", "pad_token_id")


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer stored in a local model folder (no network access)."""
    # Imported here: transformers is slow to import and slices that never tokenise skip it.
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a tokenizer from {model_dir}: {exc}") from exc


def check_same_tokenizer(base_dir: Path, draft_dir: Path) -> None:
    """Raise ``TokenizerMismatchError`` unless both folders' tokenizers share vocabulary and special ids."""
    base, draft = load_tokenizer(base_dir), load_tokenizer(draft_dir)
    base_vocab, draft_vocab = base.get_vocab(), draft.get_vocab()
    if base_vocab != draft_vocab:
        differing = sorted(
            token
            for token in base_vocab.keys() | draft_vocab.keys()
            if base_vocab.get(token) != draft_vocab.get(token)
        )
        example = differing[0]
        raise TokenizerMismatchError(
            "base and draft models must share a tokenizer, but their "
            f"vocabularies differ ({len(base_vocab)} vs {len(draft_vocab)} tokens, {len(differing)} differing; "
            f"e.g. {example!r}: base id {base_vocab.get(example)}, draft id {draft_vocab.get(example)})"
        )
    for attr in _SPECIAL_IDS:
        base_id, draft_id = getattr(base, attr), getattr(draft, attr)
        if base_id != draft_id:
            raise TokenizerMismatchError(
                f"base and draft models must share a tokenizer, but {attr} differs: base {base_id}, draft {draft_id}"
            )


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str, *, raw: bool) -> list[int]:
    """Token ids of ``text``: as one chat user turn awaiting the reply, or plainly when ``raw``.

    Tokenizers without a chat template always encode plainly.
    """
    if raw or not getattr(tokenizer, "chat_template", None):
        return _as_ids(tokenizer(text)["input_ids"])
    return encode_chat(tokenizer, [{"role": "user", "content": text}])


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation rendered by the chat template, awaiting the assistant's reply."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding by default, older versions a list of ids.
    if isinstance(encoded, Mapping):
        encoded = encoded["input_ids"]
    return _as_ids(encoded)


def _as_ids(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    ids = list(ids)
    # Some versions wrap a single conversation in a batch of one.
    if len(ids) == 1 and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]
