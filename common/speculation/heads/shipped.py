"""Heads shipped with flowring (``shipped/<base name>/``, in the repository) and finding the one for a base.

A shipped head is an ordinary head folder: ``config.json`` (the base's fingerprint, the training command,
the data recipe, acceptance per domain) and its weight shards. ``head_for_base`` compares the cheap
architecture fields first and hashes the base's embedding only when a head's fields match, so a base
without a head costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from common.models.modeling import load_model_spec
from common.models.modeling.loader import read_embedding_and_head
from common.speculation.heads.config import (
    BASE_FIELDS,
    CONFIG_FILE,
    HeadConfig,
    HeadMismatchError,
    base_fingerprint,
)

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
# A shipped head drafts by default only if training recorded at least this held-apart code acceptance (tokens
# per round): the level of the first head measured to draft faster than the 0.5B draft model in the ring
# (README, Results). A weaker head stays one flag away (--draft-head), so the default stays the faster drafter.
DEFAULT_MIN_TOKENS_PER_ROUND = 3.4


def good_enough_for_default(head_dir: Path) -> bool:
    """Whether a shipped head's recorded acceptance earns it the place of default drafter."""
    from common.speculation.heads.store import code_tokens_per_round

    recorded = code_tokens_per_round(head_dir)
    return recorded is not None and recorded >= DEFAULT_MIN_TOKENS_PER_ROUND


def shipped_heads(root: Path | None = None) -> list[Path]:
    """Every shipped head folder, by name."""
    root = SHIPPED_DIR if root is None else root
    return sorted(f for f in root.iterdir() if (f / CONFIG_FILE).is_file()) if root.is_dir() else []


def head_for_base(base_dir: Path, candidates: Iterable[Path] | None = None) -> Path | None:
    """The first of ``candidates`` (default: the shipped heads) trained for the base in ``base_dir``."""
    spec = load_model_spec(base_dir)
    fields = tuple((name, getattr(spec, name)) for name in BASE_FIELDS)
    matching: list[tuple[Path, HeadConfig]] = []
    for folder in shipped_heads() if candidates is None else candidates:
        try:
            config = HeadConfig.read(folder)
        except HeadMismatchError:  # not a head folder: not a candidate
            continue
        if config.base.fields == fields:
            matching.append((Path(folder), config))
    if not matching:
        return None
    embedding, _ = read_embedding_and_head(base_dir)
    sha = base_fingerprint(spec, embedding).embedding_sha256
    return next((folder for folder, config in matching if config.base.embedding_sha256 == sha), None)
