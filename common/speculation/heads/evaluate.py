"""Acceptance estimate of a head on held-apart samples, against the base model's own continuation.

From every answer position the head drafts a greedy chain of depth ``d`` from the base's true
features, all starts at once: level 1 rows are the teacher-forced pairs, level ``k`` rows feed the
level ``k-1`` predicted feature and token back, each attending to the true context up to its start
and to its own chain. A chain's accepted length is how many of its tokens match the base's
continuation before the first miss (0..d); a draft round then yields that plus one base token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from common.models.modeling import causal_attend
from common.speculation.heads.distill import Sample
from common.speculation.heads.model import DraftHead


@dataclass(frozen=True)
class Acceptance:
    depth: int
    top_k: int
    starts: int  # chain starts measured
    mean_accepted: float  # draft tokens accepted per chain, 0..depth
    tokens_per_round: float  # mean_accepted + 1 (the base's own next token)
    top1_agreement: float  # first draft token == the base's next token
    topk_agreement: float  # the base's next token among the head's top_k at the first level

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def estimate_acceptance(head: DraftHead, samples: Sequence[Sample], depth: int, top_k: int) -> Acceptance:
    accepted = top1 = topk = starts = 0
    for sample in samples:
        a, t1, tk, n = _sample_chains(head, sample, depth, top_k)
        accepted, top1, topk, starts = accepted + a, top1 + t1, topk + tk, starts + n
    mean = accepted / max(starts, 1)
    return Acceptance(depth, top_k, starts, mean, mean + 1, top1 / max(starts, 1), topk / max(starts, 1))


def _sample_chains(head: DraftHead, sample: Sample, depth: int, top_k: int) -> tuple[int, int, int, int]:
    tokens = sample.tokens.to(head.device, torch.long)
    total = tokens.numel()
    # Start i: context pairs (f_0, x_1)..(f_i, x_{i+1}); the chain guesses x_{i+2}..x_{i+1+depth}.
    first = max(sample.prompt_length - 2, 0)
    last = total - 2 - depth  # the whole chain's continuation is known
    if last < first:
        return 0, 0, 0, 0
    n = total - 1
    cache = head.new_cache(initial_capacity=n * depth)
    feats = head(sample.features[:n], tokens[1:], torch.arange(n), causal_attend(0, n, device=head.device), cache)
    logits = head.logits(feats)  # [n, draft_vocab]
    guesses = [head.full_ids(logits.argmax(-1))]  # level k: guesses[k-1][i] for x_{i+1+k}
    top = head.full_ids(logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices)  # [n, k]
    rows = torch.arange(n, device=head.device)
    for level in range(2, depth + 1):
        past = cache.length
        attend = torch.zeros(n, past + n, dtype=torch.bool, device=head.device)
        attend[:, :n] = causal_attend(0, n, device=head.device)
        for earlier in range(1, level):  # own chain rows of levels 2..level (the last is the row itself)
            attend[rows, n * earlier + rows] = True
        feats = head(feats, guesses[-1], rows + level - 1, attend, cache)
        guesses.append(head.full_ids(head.logits(feats).argmax(-1)))
    span = slice(first, last + 1)
    truth = torch.stack([tokens[1 + k : 1 + k + n] if 1 + k + n <= total else
                         torch.cat((tokens[1 + k :], tokens.new_full((1 + k + n - total,), -1))) for k in range(1, depth + 1)])
    hits = (torch.stack(guesses) == truth)[:, span]  # [depth, starts]
    accepted = hits.int().cumprod(0).sum()
    top1 = hits[0].sum()
    topk = (top[span] == truth[0, span, None]).any(-1).sum()
    return int(accepted), int(top1), int(topk), last + 1 - first
