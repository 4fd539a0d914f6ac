"""The scheduler service: client entry point (ROUTER) and owner of every request's decisions.

Commands to each ring service go through a :class:`~common.link.ShapedSender`, set to a request's
emulated link when its StartRequest is dispatched; replies to clients are never shaped.
"""

from __future__ import annotations

import os
import time

import structlog
import zmq

from common.link import LinkError, LinkSettings, close_all, shaped_push
from common.modeling import load_model_spec
from common.modeling.tokenizer import check_same_tokenizer, encode_prompt, load_tokenizer
from common.protocol import (
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
from services.scheduler.core import CLIENT, SchedulerCore, TextCodec

log = structlog.get_logger()


def build_core(spec: ClusterSpec) -> SchedulerCore:
    if spec.draft:  # a draft head shares the base's own embedding and lm_head: nothing to compare
        check_same_tokenizer(spec.base, spec.draft)
    tokenizer = load_tokenizer(spec.base)
    codec = TextCodec(
        encode=lambda text, raw: encode_prompt(tokenizer, text, raw=raw),
        decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True),
    )
    eos = load_model_spec(spec.base).eos_token_ids
    return SchedulerCore([p.name for p in spec.ring], codec, eos, spec.draft_settings, spec.prefill_chunk)


def serve(spec: ClusterSpec) -> None:
    structlog.contextvars.bind_contextvars(service="scheduler")
    core = build_core(spec)
    ctx = zmq.Context.instance()
    me = spec.scheduler
    clients = ctx.socket(zmq.ROUTER)
    clients.setsockopt(zmq.LINGER, 0)
    clients.bind(me.endpoint(me.client_port))
    reports = pull(ctx, me.endpoint(me.report_port))
    commands = {p.name: shaped_push(ctx, p.endpoint(p.cmd_port), f"scheduler->{p.name}") for p in spec.ring}
    poller = zmq.Poller()
    poller.register(clients, zmq.POLLIN)
    poller.register(reports, zmq.POLLIN)
    log.info("service_ready", pid=os.getpid(), client_endpoint=me.endpoint(me.client_port))
    job_started = 0.0

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
        if core.busy and time.perf_counter() - job_started > spec.timeouts.request_timeout_s:
            dispatch(core.fail_current(f"request timed out after {spec.timeouts.request_timeout_s:.0f} s"))
        if reports in events:
            try:
                msg = recv(reports)
                dispatch(core.handle(msg))
            except ProtocolError as exc:
                log.error("request_failed", error=str(exc))
                dispatch(core.fail_current(str(exc)))
        if clients in events:
            identity, *frames = clients.recv_multipart(copy=False)
            client = CLIENT + identity.bytes.hex()
            try:
                request = decode(frames)
            except ProtocolError as exc:
                dispatch([(client, GenerateReply(ok=False, error=f"bad request: {exc}"))])
                continue
            if isinstance(request, StatusRequest):
                expected = [p.name for p in spec.ring]
                ready = all(name in core.ready for name in expected)
                dispatch([(client, StatusReply(ready=ready, services=dict(core.ready), busy=core.busy))])
            elif isinstance(request, GenerateRequest):
                try:
                    LinkSettings(request.link_mbps, request.link_latency_ms)
                except LinkError as exc:
                    dispatch([(client, GenerateReply(ok=False, error=str(exc)))])
                    continue
                if not core.busy:
                    job_started = time.perf_counter()
                dispatch(core.submit(client, request))
            elif isinstance(request, Shutdown):
                for sender in commands.values():
                    sender.send(encode(Shutdown(cmd_seq=-1)))
                close_all(commands.values())
                dispatch([(client, StatusReply(ready=False))])
                log.info("service_shutdown")
                return


def _brief(stats: dict) -> dict:
    keys = ("request_id", "new_tokens", "steps", "rounds", "tokens_per_step", "decode_tokens_per_s", "wall_ms")
    return {k: stats[k] for k in keys if k in stats}
