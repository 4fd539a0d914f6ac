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
    acceptance: str  # the acceptance estimate saved at training, per domain, for people
    size_bytes: int
    weights: str  # how the tensors are stored


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
        size = sum(f.stat().st_size for f in folder.glob("head*.safetensors"))
        entries.append(HeadEntry(folder.name, folder, config.base_name, config.intermediate_size,
                                 config.draft_vocab_size, acceptance_line(folder), size, config.weights))
    return entries


def acceptance_line(head_dir: Path) -> str:
    """Held-apart acceptance per domain as training recorded it, e.g. ``code 3.41, prose 2.60 tokens per round``."""
    try:
        body = json.loads((Path(head_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no acceptance recorded"
    acceptance = body.get("acceptance", {})
    if isinstance(acceptance.get("tokens_per_round"), int | float):  # a head of one domain, before prose
        return f"{acceptance['tokens_per_round']:.2f} tokens per round held apart"
    per_domain = [(d, a.get("tokens_per_round")) for d, a in acceptance.items() if isinstance(a, dict)]
    per_domain = [(d, t) for d, t in per_domain if isinstance(t, int | float)]
    if not per_domain:
        return "no acceptance recorded"
    return ", ".join(f"{d} {t:.2f}" for d, t in per_domain) + " tokens per round held apart"


def code_tokens_per_round(head_dir: Path) -> float | None:
    """The held-apart code acceptance (tokens per round) training recorded for a head; None if it recorded none."""
    try:
        acceptance = json.loads((Path(head_dir) / CONFIG_FILE).read_text(encoding="utf-8")).get("acceptance", {})
    except (OSError, ValueError):
        return None
    value = acceptance.get("code", {}).get("tokens_per_round") if isinstance(acceptance.get("code"), dict) else None
    return float(value) if isinstance(value, int | float) else None
