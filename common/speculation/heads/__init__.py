"""One-layer EAGLE-style draft heads: the head, its config and files, and drafting trees with it.

Training lives in ``common.speculation.heads.train`` (imported on demand: it needs transformers and a GPU's worth of time).
"""

from common.speculation.heads.config import HeadConfig, HeadMismatchError, base_fingerprint
from common.speculation.heads.drafter import FeaturePairs, HeadTreeDrafter
from common.speculation.heads.model import DraftHead, load_head, save_head

__all__ = [
    "DraftHead",
    "FeaturePairs",
    "HeadConfig",
    "HeadMismatchError",
    "HeadTreeDrafter",
    "base_fingerprint",
    "load_head",
    "save_head",
]
