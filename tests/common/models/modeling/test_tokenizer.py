"""Tokenizer loading, base/draft compatibility check and prompt encoding."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.models.modeling import (
    CheckpointError,
    TokenizerMismatchError,
    check_same_tokenizer,
    encode_prompt,
    load_tokenizer,
)
from tests.support.tiny_models import BOS_ID, EOS_ID, make_tiny_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny_pair(tmp_path_factory.mktemp("tok"))


def _draft_copy(draft: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(draft, tmp_path / "draft"))


def test_pair_shares_its_tokenizer(pair: tuple[Path, Path]) -> None:
    check_same_tokenizer(*pair)
    tokenizer = load_tokenizer(pair[0])
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS_ID, EOS_ID)


def test_vocabulary_mismatch_is_reported(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, draft = pair
    other = _draft_copy(draft, tmp_path)
    tokenizer = load_tokenizer(other)
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(TokenizerMismatchError, match="vocabularies differ.*<extra>"):
        check_same_tokenizer(base, other)


def test_special_token_mismatch_is_reported(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, draft = pair
    other = _draft_copy(draft, tmp_path)
    tokenizer = load_tokenizer(other)
    tokenizer.eos_token = "<unk>"
    tokenizer.save_pretrained(other)
    with pytest.raises(TokenizerMismatchError, match="eos_token_id"):
        check_same_tokenizer(base, other)


def test_missing_tokenizer_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        load_tokenizer(tmp_path / "nowhere")


def test_encode_prompt_raw_and_chat(pair: tuple[Path, Path]) -> None:
    tokenizer = load_tokenizer(pair[0])
    raw = encode_prompt(tokenizer, "hi there", raw=True)
    assert raw == [BOS_ID, *tokenizer("hi there", add_special_tokens=False)["input_ids"]]
    assert tokenizer.decode(raw, skip_special_tokens=True) == "hi there"
    chat = encode_prompt(tokenizer, "hi there", raw=False)
    assert all(isinstance(i, int) for i in chat)
    assert tokenizer.decode(chat) == "<s>user\nhi there</s>\n<s>assistant\n"


def test_encode_prompt_without_chat_template_is_raw(pair: tuple[Path, Path]) -> None:
    tokenizer = load_tokenizer(pair[0])
    tokenizer.chat_template = None
    assert encode_prompt(tokenizer, "abc", raw=False) == encode_prompt(tokenizer, "abc", raw=True)
