"""Errors of the wire protocol."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

E = TypeVar("E", bound=StrEnum)


class ProtocolError(ValueError):
    """A frame that cannot be decoded into a known message of this protocol version.

    ``reason`` names the kind of rejection for metrics: malformed, version, unknown_kind, oversized.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


def member(kind: type[E], value: object, what: str) -> E:
    """``value`` as a member of the string enum ``kind`` (it travels as its string); a ProtocolError if none."""
    if isinstance(value, str) and value in kind._value2member_map_:
        return kind(value)
    names = " or ".join(repr(m.value) for m in kind)
    raise ProtocolError(f"{what} {value!r} is not {names}")
