"""Heads in the local cache: ``$FLOWRING_HOME/heads/<name>`` (default ``~/.cache/flowring/heads``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.models.cache import cache_root
from common.speculation.heads.config import CONFIG_FILE, HeadConfig, HeadMismatchError


@dataclass(frozen=True)
class HeadEntry:
    name: str
    path: Path
    base_name: str
    intermediate_size: int
    draft_vocab_size: int
    tokens_per_round: float | None  # the acceptance estimate saved at training, if any
    size_bytes: int


def heads_dir() -> Path:
    return cache_root() / "heads"


def list_heads(root: Path | None = None) -> list[HeadEntry]:
    """Every folder under ``root`` holding a readable head config, by name."""
    root = heads_dir() if root is None else root
    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not (folder / CONFIG_FILE).is_file():
            continue
        try:
            config = HeadConfig.read(folder)
        except HeadMismatchError:  # another kind of folder: not a head, not listed
            continue
        body = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        tokens = body.get("acceptance", {}).get("tokens_per_round")
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        entries.append(HeadEntry(folder.name, folder, config.base_name, config.intermediate_size,
                                 config.draft_vocab_size, tokens, size))
    return entries
