"""What the tests read of a running process from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def process_environment(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)
