"""The tests' name for :mod:`services.testbed.tiny_models` (it lives there so ``infra/`` can use it too)."""

from services.testbed.tiny_models import (
    BOS_ID,
    CHAT_TEMPLATE,
    EOS_ID,
    TOKENIZER_VOCAB_SIZE,
    UNK_ID,
    make_perturbed_copy,
    make_tiny_model,
    make_tiny_pair,
    make_tiny_tokenizer,
)

__all__ = ["BOS_ID", "CHAT_TEMPLATE", "EOS_ID", "TOKENIZER_VOCAB_SIZE", "UNK_ID", "make_perturbed_copy",
           "make_tiny_model", "make_tiny_pair", "make_tiny_tokenizer"]
