"""The one way a ring service's core is built from the cluster's settings: the services and the test bed call it.

A core is the pure state machine of one ring service (services/drafter, stage, verifier); this module loads
its model slice (or draft model, or draft head) the way the ClusterSpec says: dtype, device, row-invariant
numerics for stages and verifier, the fused kernels for a draft model (its numerics change which tokens are
proposed, never the output), its reduced vocabulary. ``services/run.py`` wraps the core in its sockets;
``services/testbed/local_ring.py`` wires the same cores by in-process queues.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import structlog
import torch

from common.cluster.settings import ClusterSpec
from common.models.dtypes import torch_dtype
from common.models.modeling import load_model_spec, load_slice
from common.speculation.budget import SpeculationBudget
from common.speculation.draft_vocab import draft_vocabulary
from common.speculation.drafting import ModelDrafters
from common.speculation.heads.context import HeadDrafters
from services.drafter.core import DrafterCore, Drafters
from services.stage.core import StageCore
from services.verifier.core import VerifierCore

log = structlog.get_logger()

RingCore = DrafterCore | StageCore | VerifierCore


def build_core(spec: ClusterSpec, name: str, *, draft_ids: torch.Tensor | None = None) -> RingCore:
    """Ring service ``name``'s core, its model loaded as ``spec`` says.

    ``draft_ids``: the draft model's reduced vocabulary, given outright (the test bed's arbitrary ones); by
    default it is ``spec.draft_vocab``'s, counted or read beside the draft model.
    """
    dtype = torch_dtype(spec.dtype)
    if name == "drafter":
        # A pool takes back only the drafters it handed out: its ``give`` narrows Drafter to its own kind, which
        # the Drafters protocol (services/drafter/core.py) does not express.
        drafters = cast(Drafters, build_drafters(spec, dtype, draft_ids))
        return DrafterCore(name, drafters, hops=len(spec.stages) + 1,
                           budget=SpeculationBudget(spec.speculation_budget, spec.speculation_max_in_flight))
    if name == "verifier":
        layers = load_model_spec(Path(spec.base)).num_layers
        head = load_slice(Path(spec.base), (layers, layers), with_embedding=False, with_head=True, dtype=dtype,
                          device=spec.device_of(name), row_invariant=spec.row_invariant)
        return VerifierCore(name, head, features_to="drafter" if spec.draft_head else None)
    me = spec.placement(name)
    model = load_slice(Path(spec.base), me.layers, with_embedding=me is spec.stages[0], with_head=False,
                       dtype=dtype, device=spec.device_of(name), row_invariant=spec.row_invariant)
    log.info("slice_loaded", layers=list(me.layers), parameters=model.num_parameters)
    return StageCore(name, model)


def build_drafters(spec: ClusterSpec, dtype: torch.dtype,
                   draft_ids: torch.Tensor | None = None) -> ModelDrafters | HeadDrafters:
    """Per-request drafters of a draft model, or of a draft head fed by the verifier's features."""
    if spec.draft_head:
        from common.speculation.heads import load_head

        head = load_head(Path(spec.draft_head), Path(spec.base), dtype=dtype, device=spec.device_of("drafter"))
        log.info("head_loaded", head=spec.draft_head, draft_vocab=head.config.draft_vocab_size)
        return HeadDrafters(head)
    # Draft numerics change which tokens are proposed, never the output: the faster fused kernels suffice.
    model = load_slice(Path(spec.draft), None, with_embedding=True, with_head=True, dtype=dtype,
                       device=spec.device_of("drafter"), row_invariant=False)
    if draft_ids is None and spec.draft_vocab:
        draft_ids = draft_vocabulary(Path(spec.draft), spec.draft_vocab)
    log.info("draft_loaded", draft=spec.draft, draft_vocab=model.spec.vocab_size if draft_ids is None else len(draft_ids))
    return ModelDrafters(model, draft_ids)
