"""The scheduler service: client entry point (ROUTER) and owner of every request's decisions.

Commands to each ring service go through a :class:`~common.wire.link.ShapedSender`, set to a request's
emulated link when its StartRequest is dispatched; replies to clients are never shaped. Ring services
heartbeat to the report socket. A service silent for ``liveness_timeout_s``, or back under a new pid,
interrupts every request in the ring; each is replayed from its committed context once the ring is
whole again, or fails, naming the service, after ``recovery_timeout_s`` (services/scheduler/replay.py).
With a journal (services/scheduler/journal.py) every request's committed tokens are written ahead of
what is sent; a restarted scheduler resumes the unfinished ones (services/scheduler/restore.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog
import zmq
from zmq.utils.monitor import recv_monitor_message

from common.cluster.keys import client_curve
from common.cluster.settings import ClusterSpec
from common.models.dtypes import dtype_bytes
from common.models.kv_memory import kv_bytes_per_token
from common.models.modeling import load_model_spec
from common.models.modeling.tokenizer import check_same_tokenizer, encode_prompt, load_tokenizer
from common.observability.metrics import SchedulerMetrics
from common.wire.client import (
    CancelRequest,
    GenerateReply,
    GenerateRequest,
    ResumeRequest,
    ServiceHealth,
    StatusReply,
    StatusRequest,
)
from common.wire.codec import Message, decode, encode
from common.wire.commands import EndRequest, Expand, Prune, Shutdown, StartRequest
from common.wire.curve import CLIENT as CLIENT_DOMAIN
from common.wire.curve import HANDSHAKE_EVENTS, HandshakeRefusals, KeyPair, as_server, gatekeeper_of
from common.wire.errors import ProtocolError
from common.wire.link import LinkError, LinkSettings, close_all, shaped_push
from common.wire.reports import DraftReport, Fault, Heartbeat, Ready, StageStats, Verdict, VerdictKind
from common.wire.transport import pull, recv
from services.scheduler.admission import Capacity
from services.scheduler.attempts import attempt_id
from services.scheduler.connections import ClientConnections
from services.scheduler.core import CLIENT, SchedulerCore, TextCodec
from services.scheduler.journal import CMD_SEQ_SHIFT, Journal
from services.scheduler.liveness import Liveness, describe
from services.scheduler.replay import Outage, Replays, recover, restarted
from services.scheduler.restore import Orphans, restore_job

log = structlog.get_logger()
Dispatch = Callable[[list[tuple[str, Message]]], None]
REPORTS = (Verdict, DraftReport, Ready, Heartbeat, Fault, StageStats)  # what ring services send the scheduler


CoreBuilder = Callable[[int], SchedulerCore]  # first command number -> the core


def prepare(spec: ClusterSpec) -> CoreBuilder:
    """The slow part of building the core (tokenizer, model spec), done once; a supervisor's standby does it
    before it takes over. Returns the core's builder, given the first command number."""
    if spec.draft:  # a draft head shares the base's own embedding and lm_head: nothing to compare
        check_same_tokenizer(spec.base, spec.draft)
    tokenizer = load_tokenizer(spec.base)
    codec = TextCodec(
        encode=lambda text, raw: encode_prompt(tokenizer, text, raw=raw),
        decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True),
    )
    model = load_model_spec(spec.base)
    largest = max((end - start for start, end in (s.layers for s in spec.stages)), default=0)
    capacity = Capacity(
        context_tokens=model.max_position_embeddings,
        kv_bytes_per_token=kv_bytes_per_token(model.num_kv_heads * model.head_dim, dtype_bytes(spec.dtype), largest),
    )
    return lambda first_cmd_seq: SchedulerCore(
        [p.name for p in spec.ring], codec, model.eos_token_ids, spec.draft_settings, spec.prefill_chunk,
        admission=spec.admission, capacity=capacity, default_mode=spec.default_mode, first_cmd_seq=first_cmd_seq)


def serve(spec: ClusterSpec, metrics: SchedulerMetrics | None = None, own: KeyPair | None = None,
          journal_path: Path | None = None, resume: bool = False, prepared: CoreBuilder | None = None) -> None:
    """Serve until a client asks for shutdown; with ``own`` keys every socket is CURVE (common.wire.curve).
    With ``journal_path`` requests are journaled there; with ``resume`` too (a restart) the unfinished ones
    found there are resumed, else the file starts anew. ``prepared``: the core's builder, from :func:`prepare`."""
    journal = Journal(journal_path, resume=resume) if journal_path is not None else None
    core = (prepared or prepare(spec))(((journal.boot - 1) << CMD_SEQ_SHIFT) if journal else 0)
    orphans = Orphans(max(spec.timeouts.recovery_timeout_s, 10.0), core.codec.decode if core.codec else None,  # type: ignore[arg-type]
                      restarted_at=time.perf_counter() if resume else None)
    metrics = metrics or SchedulerMetrics()
    started = time.perf_counter()
    liveness = Liveness([p.name for p in spec.ring], spec.timeouts.liveness_timeout_s)
    replays = Replays(spec.timeouts.recovery_timeout_s)
    ctx = zmq.Context.instance()
    me = spec.scheduler
    clients = ctx.socket(zmq.ROUTER)
    clients.setsockopt(zmq.LINGER, 0)
    clients.setsockopt(zmq.MAXMSGSIZE, spec.max_message_bytes)
    as_server(clients, own, CLIENT_DOMAIN, watch=False)  # its one monitor is read here
    monitor = clients.get_monitor_socket(HANDSHAKE_EVENTS)
    clients.bind(me.endpoint(me.client_port))
    connections = ClientConnections()  # a client gone (killed, closed) cancels its requests
    gate = gatekeeper_of(ctx)
    handshakes = HandshakeRefusals(gate.refusals, CLIENT_DOMAIN) if gate is not None else None
    reports = pull(ctx, me.endpoint(me.report_port), spec.max_message_bytes, own)
    ring_names = [p.name for p in spec.ring]
    commands = {p.name: shaped_push(ctx, p.endpoint(p.cmd_port), f"scheduler->{p.name}", metrics.hop_observer(p.name),
                                    client_curve(own, p))
                for p in spec.ring}
    poller = zmq.Poller()
    poller.register(clients, zmq.POLLIN)
    poller.register(reports, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    log.info("service_ready", pid=os.getpid(), client_endpoint=me.endpoint(me.client_port))

    links: dict[str, LinkSettings] = {}  # ring request id -> its emulated link, from its StartRequest on

    def dispatch(outs: list[tuple[str, Message]]) -> None:
        if journal is not None:  # write-ahead (a queued request too): on file before anything says so
            journal.sync((*core.waiting, *core.jobs.values()))
        for dest, msg in outs:
            if dest.startswith(CLIENT):
                if isinstance(msg, GenerateReply):
                    _request_done(msg, metrics)
                    orphans.answered(dest, msg.ref)
                if orphans.hold(dest, msg):
                    continue
                identity = bytes.fromhex(dest[len(CLIENT):])
                clients.send_multipart([identity, *encode(msg)], copy=False)
            else:
                request_id = getattr(msg, "request_id", "")
                if isinstance(msg, StartRequest):
                    links[request_id] = LinkSettings(msg.link_mbps, msg.link_latency_ms)
                _count_command(dest, msg, metrics)
                commands[dest].send(encode(msg), links.get(request_id))
                if isinstance(msg, EndRequest) and dest == ring_names[-1]:  # the last one of its EndRequests
                    links.pop(request_id, None)

    if journal is not None:  # new request ids continue past every id it holds, unfinished requests or not
        _restore(core, journal, replays, orphans, dispatch)

    # One poll interval at most between checks, and never longer than the liveness timeout allows.
    poll_ms = int(min(spec.timeouts.poll_interval_s, spec.timeouts.liveness_timeout_s / 3) * 1000)
    while True:
        events = dict(poller.poll(poll_ms))
        now = time.perf_counter()
        dispatch(core.expire(now, spec.timeouts.request_timeout_s))
        dispatch(recover(core, liveness, replays, now))
        for client in orphans.expired(now):
            dispatch(core.cancel(client))
        if monitor in events or clients in events:
            # Every connection event so far, before any client message: the monitor queues an accept before
            # the first message on that connection, so a reused descriptor is always seen as new in time.
            _connection_events(monitor, connections, handshakes, core, dispatch)
        if reports in events:
            msg = _receive_report(reports, spec.max_message_bytes, metrics)
            if msg is not None:
                dispatch(_on_report(msg, core, liveness, replays, metrics))
        if clients in events and not _on_client(core, spec, clients, connections, liveness, started, metrics,
                                                orphans, dispatch):
            for sender in commands.values():
                sender.send(encode(Shutdown(cmd_seq=-1)))
            close_all(commands.values())
            if journal is not None:
                journal.close()
            log.info("service_shutdown")
            return


def _restore(core: SchedulerCore, journal: Journal, replays: Replays, orphans: Orphans, dispatch: Dispatch) -> None:
    """Take up the unfinished requests of the journal: each ends its old attempt on every ring service, and
    waits to be replayed once the ring is whole; its client's messages are held until it resumes."""
    now = time.perf_counter()
    recovered = journal.recovered
    jobs = [restore_job(u, core.codec) for u in recovered.unfinished]
    core.adopt(jobs, recovered.last_id)
    for u, job in zip(recovered.unfinished, jobs, strict=True):
        orphans.add(u, now)
        log.warning("request_restored", request_id=u.request_id, ring_id=u.ring_id, committed=len(u.output))
        dispatch(core.interrupt(job.request_id, "scheduler restarted"))  # its attempt ends on every service
        # Booked under a fresh attempt id at once: the dead attempt's reports still in flight touch nothing.
        old, job.replays = job.request_id, job.replays + 1
        job.request_id = attempt_id(old, job.replays)
        core.jobs[job.request_id] = core.jobs.pop(old)
        replays.interrupted(job.request_id, Outage("scheduler", f"restarted (boot {journal.boot})", now))


def _connection_events(monitor: zmq.Socket, connections: ClientConnections, handshakes: HandshakeRefusals | None,
                       core: SchedulerCore, dispatch: Dispatch) -> None:
    """Drain the ROUTER's monitor; cancel the requests of every client whose connection is gone.

    With CURVE, a client refused in the handshake (no CURVE at all) is logged and counted there too.
    """
    while monitor.poll(0):
        event = recv_monitor_message(monitor)
        if handshakes is not None:
            handshakes.event(int(event["event"]), int(event["value"]))
        if event["event"] not in (zmq.EVENT_ACCEPTED, zmq.EVENT_DISCONNECTED):
            continue
        for client in connections.gone(event["value"]):
            log.info("client_gone", client=client)
            dispatch(core.cancel(client))


def _on_client(core: SchedulerCore, spec: ClusterSpec, clients: zmq.Socket, connections: ClientConnections,
               liveness: Liveness, started: float, metrics: SchedulerMetrics, orphans: Orphans,
               dispatch: Dispatch) -> bool:
    """Handle one client message; False when it asks the cluster to shut down."""
    identity, *frames = clients.recv_multipart(copy=False)
    client = CLIENT + identity.bytes.hex()
    connections.seen(client, identity.get(zmq.SRCFD))
    try:
        request = decode(frames, spec.max_message_bytes)
    except ProtocolError as exc:
        metrics.rejected.labels(exc.reason).inc()
        dispatch([(client, GenerateReply(ok=False, error=f"bad request: {exc}", code="invalid"))])
        return True
    if isinstance(request, StatusRequest):
        dispatch([(client, _status(spec, core, liveness, started))])
    elif isinstance(request, CancelRequest):
        dispatch(core.cancel(client))
    elif isinstance(request, ResumeRequest):  # after a restart; to a scheduler that did not restart, nothing
        known = any(job.client == client and job.request.ref == request.ref
                    for job in (*core.waiting, *core.jobs.values()))
        dispatch(orphans.resume(client, request, time.perf_counter(), known))
    elif isinstance(request, GenerateRequest):
        try:
            LinkSettings(request.link_mbps, request.link_latency_ms)
        except LinkError as exc:
            dispatch([(client, GenerateReply(ok=False, error=str(exc), code="invalid",
                                             ref=request.ref if isinstance(request.ref, str) else ""))])
            return True
        dispatch(core.submit(client, request))
    elif isinstance(request, Shutdown):
        dispatch([(client, StatusReply(ready=False))])
        return False
    else:
        metrics.rejected.labels("unknown_command").inc()
        dispatch([(client, GenerateReply(ok=False, error=f"bad request: {request.KIND} is not a request",
                                         code="invalid"))])
    return True


def _on_report(msg: Message, core: SchedulerCore, liveness: Liveness, replays: Replays,
               metrics: SchedulerMetrics) -> list[tuple[str, Message]]:
    """Hand a report to the core (signs of life to the liveness book); a failure fails its request only."""
    if isinstance(msg, Ready | Heartbeat):
        now = time.perf_counter()
        old_pid = liveness.hear(msg, now)
        if not isinstance(msg, Ready):
            return []
        return (restarted(core, replays, msg, old_pid, now) if old_pid else []) + core.handle(msg)
    request_id = getattr(msg, "request_id", "")
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        if isinstance(msg, Verdict) and request_id in core.running:
            _count_verdict(msg, metrics)
        try:
            return core.handle(msg)
        except ProtocolError as exc:  # an order violation in one request's reports fails that request only
            metrics.rejected.labels("order").inc()
            log.error("request_failed", error=str(exc))
            return core.fail(request_id, str(exc))
        except Exception as exc:  # a bug concerns this request only: fail it, keep serving
            log.exception("request_failed", error=repr(exc))
            return core.fail(request_id, f"scheduler: {type(exc).__name__}: {exc}")


def _status(spec: ClusterSpec, core: SchedulerCore, liveness: Liveness, started: float) -> StatusReply:
    """The scheduler's own row, then every ring service's as last heard."""
    now = time.perf_counter()
    own = describe(spec, spec.scheduler)
    row = ServiceHealth(role=own.role, name=own.name, host=own.host, pid=os.getpid(), endpoints=own.endpoints,
                        healthy=True, last_seen_s=0.0, uptime_s=round(now - started, 3),
                        in_flight=len(core.running), metrics=own.metrics)
    return StatusReply(ready=liveness.all_healthy(now), services=(row, *liveness.health(spec, now)), busy=core.busy)


def _receive_report(sock: zmq.Socket, max_bytes: int, metrics: SchedulerMetrics) -> Message | None:
    """The next report, or None when it was rejected (logged and counted)."""
    try:
        msg = recv(sock, max_bytes)
    except ProtocolError as exc:
        metrics.rejected.labels(exc.reason).inc()
        log.warning("message_rejected", reason=exc.reason, error=str(exc))
        return None
    if not isinstance(msg, REPORTS):
        metrics.rejected.labels("unknown_command").inc()
        log.warning("message_rejected", reason="unknown_command", kind=msg.KIND)
        return None
    metrics.handled.labels(msg.KIND).inc()
    return msg


def _count_verdict(verdict: Verdict, metrics: SchedulerMetrics) -> None:
    """vLLM's spec-decode counters: one draft per verified tree; the root is context, not a draft token."""
    if verdict.kind is not VerdictKind.TREE:
        return
    metrics.drafts.inc()
    metrics.draft_tokens.inc(max(verdict.rows - 1, 0))
    metrics.accepted_tokens.inc(max(len(verdict.accepted) - 1, 0))


def _count_command(dest: str, msg: Message, metrics: SchedulerMetrics) -> None:
    if isinstance(msg, Expand):
        metrics.expands.inc()
    elif isinstance(msg, Prune) and dest == "drafter":  # one event goes to every service: count it once
        metrics.prunes.inc()
        if msg.ends_round:
            metrics.round_restarts.inc()


def _request_done(reply: GenerateReply, metrics: SchedulerMetrics) -> None:
    """The canonical line of a finished request, and its latency metrics."""
    stats = reply.stats
    metrics.requests.labels("ok" if reply.ok else "error").inc()
    if "latency_ms" in stats:
        metrics.request_seconds.observe(stats["latency_ms"] / 1e3)
    if reply.ok and "ttft_ms" in stats:
        metrics.ttft_seconds.observe(stats["ttft_ms"] / 1e3)
    brief = {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items() if k != "services"}
    busy = {f"{name}_busy_ms": round(s.get("busy_ms", 0.0), 1) for name, s in stats.get("services", {}).items()}
    log.info("request_done", ok=reply.ok, error=reply.error or None, **brief, **busy)
