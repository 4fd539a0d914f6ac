"""Which requests the scheduler accepts, and when: validation and the KV memory estimate (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.speculation.modes import MODES, DraftSettings
from common.wire.client import MAX_REF_CHARS, GenerateRequest

MIB = 1 << 20


@dataclass(frozen=True)
class Capacity:
    """What the ring can hold: the base model's context and the KV bytes per token of its largest stage."""

    context_tokens: int = 0  # max_position_embeddings of the base model; 0: unchecked
    kv_bytes_per_token: int = 0  # K and V of every layer of the largest stage (common.models.kv_memory); 0: unchecked


def tree_nodes(draft: DraftSettings) -> int:
    """Tree rows a request may hold beyond its context: the fill tree plus a step's largest growth (or the
    node cap of drafting ahead)."""
    fill = max(draft.fill_nodes, draft.pipedec_width * draft.fill_depth)
    growth = 3 * draft.expand_nodes * max(draft.grow_levels, 1)  # 3: an idle expansion's largest scale
    return fill + max(growth, draft.node_cap)


def kv_need_bytes(prompt_tokens: int, max_new_tokens: int, draft: DraftSettings, capacity: Capacity) -> int:
    """KV bytes one request needs on the largest stage (prompt, output and draft-tree rows)."""
    return (prompt_tokens + max_new_tokens + tree_nodes(draft)) * capacity.kv_bytes_per_token


def invalid_reason(request: GenerateRequest, prompt_tokens: int, capacity: Capacity, max_prompt_tokens: int = 0) -> str:
    """Why ``request`` cannot run (one clear sentence), or "" when it can; ``max_prompt_tokens``: the
    operator's cap (0: none but the context)."""
    if len(request.ref) > MAX_REF_CHARS:
        return f"ref of {len(request.ref)} characters exceeds the limit of {MAX_REF_CHARS}"
    if prompt_tokens == 0:
        return "empty prompt: send prompt text or prompt_ids"
    if max_prompt_tokens and prompt_tokens > max_prompt_tokens:
        return (f"prompt of {prompt_tokens} tokens exceeds this cluster's limit of {max_prompt_tokens} tokens "
                "(max_prompt_tokens)")
    if not math.isfinite(request.temperature) or request.temperature < 0:
        return f"temperature must be a finite number >= 0, not {request.temperature}"
    if request.max_new_tokens < 1:
        return f"max_new_tokens must be at least 1, not {request.max_new_tokens}"
    if request.mode and request.mode not in MODES:  # "": the cluster's default mode
        return f"mode {request.mode!r} is not one of {', '.join(MODES)}"
    context = capacity.context_tokens
    if context and prompt_tokens >= context:
        return f"prompt of {prompt_tokens} tokens does not fit the model's context of {context} tokens"
    if context and prompt_tokens + request.max_new_tokens > context:
        return (f"max_new_tokens {request.max_new_tokens} after a prompt of {prompt_tokens} tokens exceeds "
                f"the model's context of {context} tokens")
    return ""


def busy_reason(in_flight: int, queued: int, retry_after_s: float) -> str:
    return f"busy: {in_flight} requests in flight and {queued} queued, retry after {retry_after_s:g} s"
