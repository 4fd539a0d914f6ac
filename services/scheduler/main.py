"""The scheduler service: client entry point (ROUTER) and owner of every request's decisions.

Commands to each ring service go through a :class:`~common.link.ShapedSender`, set to a request's
emulated link when its StartRequest is dispatched; replies to clients are never shaped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import structlog
import zmq
from zmq.utils.monitor import recv_monitor_message

from common.link import LinkError, LinkSettings, close_all, shaped_push
from common.modeling import load_model_spec
from common.modeling.tokenizer import check_same_tokenizer, encode_prompt, load_tokenizer
from common.protocol import (
    CancelRequest,
    GenerateReply,
    GenerateRequest,
    Message,
    ProtocolError,
    Shutdown,
    StartRequest,
    StatusReply,
    StatusRequest,
    decode,
    encode,
)
from common.settings import ClusterSpec
from common.transport import pull, recv
from services.scheduler.admission import Capacity, kv_bytes_per_token
from services.scheduler.connections import ClientConnections
from services.scheduler.core import CLIENT, SchedulerCore, TextCodec

log = structlog.get_logger()
Dispatch = Callable[[list[tuple[str, Message]]], None]


def build_core(spec: ClusterSpec) -> SchedulerCore:
    if spec.draft:  # a draft head shares the base's own embedding and lm_head: nothing to compare
        check_same_tokenizer(spec.base, spec.draft)
    tokenizer = load_tokenizer(spec.base)
    codec = TextCodec(
        encode=lambda text, raw: encode_prompt(tokenizer, text, raw=raw),
        decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True),
    )
    model = load_model_spec(spec.base)
    largest = max((end - start for start, end in (s.layers for s in spec.stages)), default=0)
    dtype_bytes = 2 if spec.dtype == "bfloat16" else 4
    capacity = Capacity(
        context_tokens=model.max_position_embeddings,
        kv_bytes_per_token=kv_bytes_per_token(largest, model.num_kv_heads, model.head_dim, dtype_bytes),
    )
    return SchedulerCore([p.name for p in spec.ring], codec, model.eos_token_ids, spec.draft_settings,
                         spec.prefill_chunk, admission=spec.admission, capacity=capacity,
                         default_mode=spec.default_mode)


def serve(spec: ClusterSpec) -> None:
    structlog.contextvars.bind_contextvars(service="scheduler")
    core = build_core(spec)
    ctx = zmq.Context.instance()
    me = spec.scheduler
    clients = ctx.socket(zmq.ROUTER)
    clients.setsockopt(zmq.LINGER, 0)
    clients.bind(me.endpoint(me.client_port))
    monitor = clients.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
    connections = ClientConnections()  # a client gone (killed, closed) cancels its requests
    reports = pull(ctx, me.endpoint(me.report_port))
    commands = {p.name: shaped_push(ctx, p.endpoint(p.cmd_port), f"scheduler->{p.name}") for p in spec.ring}
    poller = zmq.Poller()
    poller.register(clients, zmq.POLLIN)
    poller.register(reports, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    log.info("service_ready", pid=os.getpid(), client_endpoint=me.endpoint(me.client_port))

    def dispatch(outs: list[tuple[str, Message]]) -> None:
        for dest, msg in outs:
            if dest.startswith(CLIENT):
                identity = bytes.fromhex(dest[len(CLIENT):])
                clients.send_multipart([identity, *encode(msg)], copy=False)
                if isinstance(msg, GenerateReply):
                    log.info("request_done", ok=msg.ok, error=msg.error or None, **_brief(msg.stats))
            else:
                if isinstance(msg, StartRequest):
                    commands[dest].configure(msg.link_mbps, msg.link_latency_ms)
                commands[dest].send(encode(msg))

    while True:
        events = dict(poller.poll(int(spec.timeouts.poll_interval_s * 1000)))
        dispatch(core.expire(time.perf_counter(), spec.timeouts.request_timeout_s))
        if monitor in events:  # before client messages, so a reused descriptor is seen as new
            event = recv_monitor_message(monitor)
            for client in connections.gone(event["value"]):
                log.info("client_gone", client=client)
                dispatch(core.cancel(client))
        if reports in events:
            _on_report(core, reports, dispatch)
        if clients in events and not _on_client(core, spec, clients, connections, dispatch):
            for sender in commands.values():
                sender.send(encode(Shutdown(cmd_seq=-1)))
            close_all(commands.values())
            log.info("service_shutdown")
            return


def _on_client(core: SchedulerCore, spec: ClusterSpec, clients: zmq.Socket, connections: ClientConnections,
               dispatch: Dispatch) -> bool:
    """Handle one client message; False when it asks the cluster to shut down."""
    identity, *frames = clients.recv_multipart(copy=False)
    client = CLIENT + identity.bytes.hex()
    connections.seen(client, identity.get(zmq.SRCFD))
    try:
        request = decode(frames)
    except ProtocolError as exc:
        dispatch([(client, GenerateReply(ok=False, error=f"bad request: {exc}", code="invalid"))])
        return True
    if isinstance(request, StatusRequest):
        ready = all(p.name in core.ready for p in spec.ring)
        dispatch([(client, StatusReply(ready=ready, services=dict(core.ready), busy=core.busy))])
    elif isinstance(request, CancelRequest):
        dispatch(core.cancel(client))
    elif isinstance(request, GenerateRequest):
        try:
            LinkSettings(request.link_mbps, request.link_latency_ms)
        except LinkError as exc:
            dispatch([(client, GenerateReply(ok=False, error=str(exc), code="invalid"))])
            return True
        dispatch(core.submit(client, request))
    elif isinstance(request, Shutdown):
        dispatch([(client, StatusReply(ready=False))])
        return False
    return True


def _on_report(core: SchedulerCore, reports: zmq.Socket, dispatch: Dispatch) -> None:
    try:
        msg = recv(reports)
    except ProtocolError as exc:  # no request id to fail: its request meets its deadline instead
        log.error("bad_report_dropped", error=str(exc))
        return
    try:
        dispatch(core.handle(msg))
    except ProtocolError as exc:  # an order violation in one request's reports fails that request only
        request_id = getattr(msg, "request_id", "")
        log.error("request_failed", request_id=request_id, error=str(exc))
        dispatch(core.fail(request_id, str(exc)))


def _brief(stats: dict) -> dict:
    keys = ("request_id", "new_tokens", "steps", "rounds", "tokens_per_step", "decode_tokens_per_s", "wall_ms")
    return {k: stats[k] for k in keys if k in stats}
