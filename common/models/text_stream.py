"""Text deltas of a growing token sequence that never take back what was already sent."""

from __future__ import annotations

from collections.abc import Callable, Sequence

INCOMPLETE = "\ufffd"  # what a decoder prints for the bytes of a character cut in the middle


class TextStream:
    """Incremental detokenization: each delta is decoded in the context of the tokens before it.

    The text of the tokens since ``_prefix`` is decoded with and without the newest tokens; what the
    newest add is emitted. A trailing incomplete UTF-8 character is held back (until ``final``), and
    text already sent is never revised, even when a tokenizer's clean-up would rewrite it.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._prefix = 0  # first token of the decoding window
        self._read = 0  # tokens whose text was sent
        self.sent = ""

    def push(self, token_ids: Sequence[int], final: bool = False) -> str:
        """The text to send after the output became ``token_ids``."""
        before = self._decode(token_ids[self._prefix : self._read])
        text = self._decode(token_ids[self._prefix :])
        if len(text) <= len(before) or (text.endswith(INCOMPLETE) and not final):
            return ""
        delta = text[len(before) :]
        self._prefix, self._read = self._read, len(token_ids)
        self.sent += delta
        return delta
