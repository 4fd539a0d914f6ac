"""The test bed's ring is built as the services build theirs: the same core classes with the same settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.models.modeling import ModelSlice
from common.speculation.heads import save_head
from common.speculation.heads.model import new_head
from services.cores import build_core
from services.launcher import plan_local
from tests.support.local_ring import LocalRing
from tests.support.tiny_models import make_tiny_pair


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cores")
    base, draft = make_tiny_pair(root, family="qwen2")
    save_head(new_head(base, intermediate_size=48, draft_ids=None, dtype=torch.float32, seed=2), root / "head",
              dtype=torch.float32)
    return base, draft, root / "head"


def _slice(model: ModelSlice) -> tuple:
    dtype = next(model.parameters()).dtype
    return (type(model).__name__, model.row_invariant, model.layer_range, model.embed_tokens is not None,
            model.lm_head is not None, dtype)


def _settings(core) -> tuple:
    """What construction decided: the core's class, its model slice (or drafters and their model) and settings."""
    kind = type(core).__name__
    if kind == "StageCore":
        return kind, _slice(core._model)
    if kind == "VerifierCore":
        return kind, _slice(core._head), core._features_to
    drafters = core._drafters
    if hasattr(drafters, "_head"):
        return kind, type(drafters).__name__, next(drafters._head.parameters()).dtype, core._hops
    return kind, type(drafters).__name__, _slice(drafters._model), drafters._calls._logits.draft_ids, core._hops


@pytest.mark.parametrize("drafting", ["draft model", "draft head"])
def test_the_test_bed_builds_the_services_cores(models, drafting):
    base, draft, head = models
    with_head = drafting == "draft head"
    ring = LocalRing(base, None if with_head else draft, 2, draft_head=head if with_head else None)
    spec = plan_local(base, None if with_head else draft, 2, draft_head=head if with_head else None)
    for name, core in ring._cores.items():
        assert _settings(core) == _settings(build_core(spec, name)), name
    stage = _settings(ring.stages[0])[1]
    assert stage[1] is True and stage[3] is True  # row-invariant numerics; stage 1 holds the embedding
    if not with_head:  # the draft model runs the fused kernels, in the test bed as in the services
        assert _settings(ring.drafter)[2][1] is False
