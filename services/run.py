"""Entry point of every service process: ``python -m services.run --cluster FILE --service NAME``."""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog
import torch
import zmq

from common.drafting import ModelDrafters
from common.link import shaped_push
from common.logs import configure
from common.modeling import load_model_spec, load_slice
from common.settings import ClusterSpec
from common.transport import pull
from services.runtime import ServiceSockets, serve

log = structlog.get_logger()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cluster", type=Path, required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure(args.log_level)
    spec = ClusterSpec.load(args.cluster)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if args.service == "scheduler":
        from services.scheduler.main import serve as serve_scheduler

        serve_scheduler(spec)
        return
    run_ring_service(spec, args.service)


def run_ring_service(spec: ClusterSpec, name: str) -> None:
    structlog.contextvars.bind_contextvars(service=name)
    me = spec.placement(name)
    dtype = DTYPES[spec.dtype]
    core, drop, after = _build(spec, name, dtype)
    ctx = zmq.Context.instance()
    inputs = [pull(ctx, me.endpoint(me.cmd_port))]
    if me.data_port:
        inputs.insert(0, pull(ctx, me.endpoint(me.data_port)))
    routes = {"scheduler": shaped_push(ctx, spec.scheduler.endpoint(spec.scheduler.report_port), f"{name}->scheduler")}
    if name == "verifier" and spec.draft_head:  # base features for the drafter's head
        routes["drafter"] = shaped_push(ctx, spec.drafter.endpoint(spec.drafter.cmd_port), f"{name}->drafter")
    successor = spec.successor(name)
    if successor is not None:
        routes["next"] = shaped_push(ctx, successor.endpoint(successor.data_port), f"{name}->{successor.name}")
    serve(core, ServiceSockets(inputs, routes), poll_interval_s=spec.timeouts.poll_interval_s,
          drop_request=drop, after_send=after)


def _build(spec: ClusterSpec, name: str, dtype: torch.dtype):
    device = spec.device
    if name == "drafter":
        from services.drafter.core import DrafterCore

        core = DrafterCore(name, _drafter(spec, dtype), hops=len(spec.stages) + 1)
        return core, core.drop_request, core.prefill_draft_context
    if name == "verifier":
        from services.verifier.core import VerifierCore

        layers = load_model_spec(Path(spec.base)).num_layers
        head = load_slice(Path(spec.base), (layers, layers), with_embedding=False, with_head=True, dtype=dtype,
                          device=device)
        core = VerifierCore(name, head, features_to="drafter" if spec.draft_head else None)
        return core, core.drop_request, None
    from services.stage.core import StageCore

    me = spec.placement(name)
    model = load_slice(Path(spec.base), me.layers, with_embedding=me is spec.stages[0], with_head=False,
                       dtype=dtype, device=device)
    log.info("slice_loaded", layers=list(me.layers), parameters=model.num_parameters)
    core = StageCore(name, model)
    return core, core.drop_request, None


def _drafter(spec: ClusterSpec, dtype: torch.dtype):
    """Per-request drafters of a draft model, or of a draft head fed by the verifier's features."""
    if spec.draft_head:
        from common.heads import load_head
        from common.heads.context import HeadDrafters

        head = load_head(Path(spec.draft_head), Path(spec.base), dtype=dtype, device=spec.device)
        log.info("head_loaded", head=spec.draft_head, draft_vocab=head.config.draft_vocab_size)
        return HeadDrafters(head)
    model = load_slice(Path(spec.draft), None, with_embedding=True, with_head=True, dtype=dtype, device=spec.device)
    return ModelDrafters(model)


if __name__ == "__main__":
    main()
