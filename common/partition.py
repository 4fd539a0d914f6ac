"""Splitting a model's decoder layers into contiguous stage ranges."""

from __future__ import annotations


def even_split(num_layers: int, stages: int) -> list[tuple[int, int]]:
    """``stages`` contiguous, near-equal, non-empty layer ranges covering ``[0, num_layers)``."""
    if not 1 <= stages <= num_layers:
        raise ValueError(f"cannot split {num_layers} layers into {stages} stages")
    base, extra = divmod(num_layers, stages)
    ranges, start = [], 0
    for i in range(stages):
        size = base + (1 if i < extra else 0)
        ranges.append((start, start + size))
        start += size
    return ranges
