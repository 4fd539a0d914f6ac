"""Entry point of every service process: ``python -m services.run --cluster FILE --service NAME``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch
import zmq

from common.cluster.keys import client_curve, own_keys, start_gatekeeper
from common.cluster.settings import ClusterSpec
from common.models.devices import prepare_device
from common.observability.logs import configure
from common.observability.metrics import SchedulerMetrics, ServiceMetrics, serve_metrics
from common.wire.curve import KeyPair
from common.wire.link import shaped_push
from common.wire.transport import pull
from services.run_folder import RunFolder
from services.runtime import CoreHooks, ServiceSockets, serve
from services.supervisor import RESTART_ENV, STANDBY_ENV, await_takeover

if TYPE_CHECKING:
    from services.cores import RingCore

log = structlog.get_logger()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cluster", type=Path, required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="Write JSON log lines here, rotated (default: stderr).")
    args = parser.parse_args(argv)
    standby = STANDBY_ENV in os.environ  # a warm copy kept by the supervisor: its log file begins at the takeover
    configure(args.log_level, service=args.service, log_file=None if standby else args.log_file)
    spec = ClusterSpec.load(args.cluster)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    prepared = None
    if args.service == "scheduler":
        from services.scheduler.main import prepare

        prepared = prepare(spec)  # the slow part (tokenizer, model spec): a standby has it done before its takeover
    if standby:
        log.info("standby_ready", pid=os.getpid())  # on stderr: the supervisor's output
        restart = await_takeover()
        configure(args.log_level, service=args.service, log_file=args.log_file)
        log.info("standby_took_over", pid=os.getpid(), restart=restart)
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
                            resume=RESTART_ENV in os.environ, prepared=prepared)
        else:
            run_ring_service(spec, args.service, metrics, own)
    finally:
        if gate is not None:
            gate.stop()


def run_ring_service(spec: ClusterSpec, name: str, metrics: ServiceMetrics, own: KeyPair | None = None) -> None:
    """Serve ring service ``name``; with ``own`` keys every socket is CURVE (the caller runs the ZAP handler)."""
    me = spec.placement(name)
    serve_metrics(metrics, me.host, me.metrics_port)
    from services.cores import build_core  # the scheduler's process loads no model code

    prepare_device(spec.device_of(name), spec.deterministic)  # DeviceError: "cuda:3 requested, 1 GPU present"; CUDA made deterministic
    core = build_core(spec, name)
    hooks = _hooks(core)
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


def _hooks(core: RingCore) -> CoreHooks:
    """What the runtime calls on ``core`` besides ``handle``."""
    from services.drafter.core import DrafterCore
    from services.verifier.core import VerifierCore

    if isinstance(core, DrafterCore):
        return CoreHooks(core.drop_request, batch_ready=core.batch_ready, run_batch=core.run_batch)
    if isinstance(core, VerifierCore):
        return CoreHooks(core.drop_request, batch_ready=core.batch_ready, run_batch=core.run_batch)
    stage = core
    return CoreHooks(stage.drop_request, kv_cache_bytes=lambda: stage.kv_cache_bytes, batch_ready=stage.batch_ready,
                     run_batch=stage.run_batch)


if __name__ == "__main__":
    main()
