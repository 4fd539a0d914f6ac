"""Errors of the wire protocol."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A frame that cannot be decoded into a known message of this protocol version.

    ``reason`` names the kind of rejection for metrics: malformed, version, unknown_kind, oversized.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason
