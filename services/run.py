"""Entry point of every service process: ``python -m services.run --cluster FILE --service NAME``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import structlog
import torch
import zmq

from common.cluster.keys import client_curve, own_keys, start_gatekeeper
from common.cluster.settings import ClusterSpec
from common.models.dtypes import torch_dtype
from common.models.modeling import load_model_spec, load_slice
from common.observability.logs import configure
from common.observability.metrics import SchedulerMetrics, ServiceMetrics, serve_metrics
from common.speculation.draft_vocab import draft_vocabulary
from common.speculation.drafting import ModelDrafters
from common.wire.curve import KeyPair
from common.wire.link import shaped_push
from common.wire.transport import pull
from services.run_folder import RunFolder
from services.runtime import CoreHooks, ServiceSockets, serve
from services.supervisor import RESTART_ENV

log = structlog.get_logger()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cluster", type=Path, required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="Write JSON log lines here, rotated (default: stderr).")
    args = parser.parse_args(argv)
    configure(args.log_level, service=args.service, log_file=args.log_file)
    spec = ClusterSpec.load(args.cluster)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    own = own_keys(spec)
    metrics = SchedulerMetrics() if args.service == "scheduler" else ServiceMetrics()
    # A LAN cluster: every peer of this process's sockets is checked against the authorized keys.
    gate = None
    if own is not None:
        gate = start_gatekeeper(zmq.Context.instance(), spec, metrics.peers_refused.inc)
        log.info("curve_enabled", public_key=own.public.decode())
    try:
        if args.service == "scheduler":
            from services.scheduler.main import serve as serve_scheduler

            serve_metrics(metrics, spec.scheduler.host, spec.scheduler.metrics_port)
            # Only a restarted scheduler takes up the journal: a first start begins a new one.
            serve_scheduler(spec, metrics, own, journal_path=RunFolder(args.cluster.parent).journal,
                            resume=RESTART_ENV in os.environ)
        else:
            run_ring_service(spec, args.service, metrics, own)
    finally:
        if gate is not None:
            gate.stop()


def run_ring_service(spec: ClusterSpec, name: str, metrics: ServiceMetrics, own: KeyPair | None = None) -> None:
    """Serve ring service ``name``; with ``own`` keys every socket is CURVE (the caller runs the ZAP handler)."""
    me = spec.placement(name)
    serve_metrics(metrics, me.host, me.metrics_port)
    core, hooks = _build(spec, name, torch_dtype(spec.dtype))
    ctx = zmq.Context.instance()
    limit = spec.max_message_bytes
    data = pull(ctx, me.endpoint(me.data_port), limit, own) if me.data_port else None
    report = spec.scheduler.endpoint(spec.scheduler.report_port)
    routes = {"scheduler": shaped_push(ctx, report, f"{name}->scheduler", metrics.hop_observer("scheduler"),
                                       client_curve(own, spec.scheduler))}
    if name == "verifier" and spec.draft_head:  # base features for the drafter's head
        routes["drafter"] = shaped_push(ctx, spec.drafter.endpoint(spec.drafter.cmd_port), f"{name}->drafter",
                                        metrics.hop_observer("drafter"), client_curve(own, spec.drafter))
    successor = spec.successor(name)
    if successor is not None:
        routes["next"] = shaped_push(ctx, successor.endpoint(successor.data_port), f"{name}->{successor.name}",
                                     metrics.hop_observer(successor.name), client_curve(own, successor))
    sockets = ServiceSockets(pull(ctx, me.endpoint(me.cmd_port), limit, own), data, routes)
    serve(core, sockets, hooks, timeouts=spec.timeouts, metrics=metrics, max_message_bytes=limit)


def _build(spec: ClusterSpec, name: str, dtype: torch.dtype):
    device = spec.device
    if name == "drafter":
        from services.drafter.core import DrafterCore

        core = DrafterCore(name, _drafter(spec, dtype), hops=len(spec.stages) + 1)
        return core, CoreHooks(core.drop_request, batch_ready=core.batch_ready, run_batch=core.run_batch)
    if name == "verifier":
        from services.verifier.core import VerifierCore

        layers = load_model_spec(Path(spec.base)).num_layers
        head = load_slice(Path(spec.base), (layers, layers), with_embedding=False, with_head=True, dtype=dtype,
                          device=device, row_invariant=spec.row_invariant)
        core = VerifierCore(name, head, features_to="drafter" if spec.draft_head else None)
        return core, CoreHooks(core.drop_request, batch_ready=core.batch_ready, run_batch=core.run_batch)
    from services.stage.core import StageCore

    me = spec.placement(name)
    model = load_slice(Path(spec.base), me.layers, with_embedding=me is spec.stages[0], with_head=False,
                       dtype=dtype, device=device, row_invariant=spec.row_invariant)
    log.info("slice_loaded", layers=list(me.layers), parameters=model.num_parameters)
    core = StageCore(name, model)
    return core, CoreHooks(core.drop_request, kv_cache_bytes=lambda: core.kv_cache_bytes, batch_ready=core.batch_ready,
                           run_batch=core.run_batch)


def _drafter(spec: ClusterSpec, dtype: torch.dtype):
    """Per-request drafters of a draft model, or of a draft head fed by the verifier's features."""
    if spec.draft_head:
        from common.speculation.heads import load_head
        from common.speculation.heads.context import HeadDrafters

        head = load_head(Path(spec.draft_head), Path(spec.base), dtype=dtype, device=spec.device)
        log.info("head_loaded", head=spec.draft_head, draft_vocab=head.config.draft_vocab_size)
        return HeadDrafters(head)
    # Draft numerics change which tokens are proposed, never the output: the faster fused kernels suffice.
    model = load_slice(Path(spec.draft), None, with_embedding=True, with_head=True, dtype=dtype, device=spec.device,
                       row_invariant=False)
    draft_ids = draft_vocabulary(Path(spec.draft), spec.draft_vocab) if spec.draft_vocab else None
    log.info("draft_loaded", draft=spec.draft, draft_vocab=model.spec.vocab_size if draft_ids is None else len(draft_ids))
    return ModelDrafters(model, draft_ids)


if __name__ == "__main__":
    main()
