"""A restarted scheduler takes up its predecessor's unfinished requests (from services/scheduler/journal.py).

Each comes back as a Job under its last ring id, is interrupted (its attempt ends on every ring service)
and waits in the replay book (services/scheduler/replay.py) until the ring is whole, then runs again from
its committed context. A greedy request runs from the prompt and its output less the last token, and the
first token the ring re-derives must equal the journal's last (``Job.expect``), else it fails in one line.
A sampled one runs from its whole committed output, as a ring-service replay does.

Its client does not know the scheduler restarted: it keeps waiting and, after a silence, sends a
ResumeRequest with the number of output tokens it received (services/client.py). Until then the
request is an orphan: whatever the scheduler sends its client is held. The ResumeRequest attaches it:
the tokens journaled but never received go out in one chunk, then the held messages, in order. An orphan
no client claims within the bound is cancelled. A request (its client and ref) the restarted scheduler
neither holds nor answered (it was lost with the last scheduler before it was journaled) is told so
(NOT_ADMITTED, with its ref); a client that has no output yet sends its request again. A ResumeRequest
still on its way when the request's reply left (the client waited RESUME_AFTER_S) gets nothing: told
NOT_ADMITTED, the client would send that request again, or take the answer for its next request.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from common.models.text_stream import TextStream
from common.wire.client import NOT_ADMITTED, GenerateChunk, GenerateReply, ResumeRequest
from common.wire.codec import Message
from services.scheduler.job import Job, TextCodec
from services.scheduler.journal import Unfinished

log = structlog.get_logger()
Outbound = tuple[str, Message]


def restore_job(u: Unfinished, codec: TextCodec | None) -> Job:
    """The Job of an unfinished request, as its committed output leaves it."""
    job = Job(u.client, u.request, u.ring_id, u.prompt, kv_bytes=0, replays=u.attempt,
              started=time.perf_counter())  # its deadline and latency count again from the restart
    job.output = list(u.output)
    if u.output and u.request.temperature == 0:  # greedy: the ring must re-derive the last token
        job.expect = job.output.pop()
    job.streamed = len(u.output)
    if u.request.stream and codec is not None:
        job.text = TextStream(codec.decode)
        job.text.push(u.output)
    return job


@dataclass
class Orphan:
    request_id: str
    since: float
    committed: tuple[int, ...]  # the output the journal held at the restart
    stream: bool
    ref: str  # its GenerateRequest.ref
    held: list[Message] = field(default_factory=list)


class Orphans:
    """Restored requests whose client has not yet resumed: their messages are held."""

    ANSWERED_LIMIT = 4096  # requests answered since the restart, remembered while a ResumeRequest may trail
    def __init__(self, bound_s: float, decode: Callable[[list[int]], str] | None,
                 restarted_at: float | None = None) -> None:
        self.bound_s = bound_s
        self.restarted_at = restarted_at  # None: this scheduler is a cluster's first
        self._decode = decode
        self._by_client: dict[str, Orphan] = {}
        self._told: set[tuple[str, str]] = set()  # (client, ref) told NOT_ADMITTED
        self._answered: OrderedDict[tuple[str, str], None] = OrderedDict()  # (client, ref) replied to

    def add(self, u: Unfinished, now: float) -> None:
        self._by_client[u.client] = Orphan(u.request_id, now, tuple(u.output), u.request.stream, u.request.ref)

    def answered(self, client: str, ref: str) -> None:
        """The reply of ``client``'s request ``ref`` left: a ResumeRequest of it still on its way gets nothing."""
        if self.restarted_at is None:
            return  # a first scheduler tells no one NOT_ADMITTED
        self._answered[(client, ref)] = None
        while len(self._answered) > self.ANSWERED_LIMIT:
            self._answered.popitem(last=False)

    def hold(self, client: str, msg: Message) -> bool:
        """Whether ``msg`` to ``client`` was held (its client has not resumed yet)."""
        orphan = self._by_client.get(client)
        if orphan is None:
            return False
        orphan.held.append(msg)
        return True

    def resume(self, client: str, resume: ResumeRequest, now: float, known: bool = False) -> list[Outbound]:
        """The client is back for its request ``resume.ref``: what it missed, then what was held. A request
        with no orphan gets nothing from a first scheduler (it is running or its reply on the way), and from
        a restarted one, within the bound, NOT_ADMITTED once unless it was answered here: it died with the
        last scheduler before it was journaled. ``known``: the request is here (sent again): nothing."""
        ref = resume.ref if isinstance(resume.ref, str) else ""
        orphan = self._by_client.get(client)
        if orphan is not None and orphan.ref != ref:
            return []  # a ResumeRequest of an earlier request of this client, still on its way
        if orphan is None:
            late = self.restarted_at is None or now - self.restarted_at > self.bound_s
            key = (client, ref)
            if late or known or key in self._told or key in self._answered:  # its other ResumeRequests
                return []
            self._told.add(key)
            log.warning("client_not_admitted", client=client, ref=ref, received=resume.received)
            return [(client, GenerateReply(ok=False, error=NOT_ADMITTED, code="failed", ref=ref))]
        del self._by_client[client]
        received = min(max(resume.received, 0), len(orphan.committed))
        out: list[Outbound] = []
        gap = orphan.committed[received:] if orphan.stream else ()  # a reply carries every token anyway
        if gap:
            out.append((client, GenerateChunk(request_id=orphan.request_id, token_ids=gap, text=self._gap_text(
                orphan.committed, received), ref=orphan.ref)))
        log.info("client_resumed", request_id=orphan.request_id, received=received, resent=len(gap),
                 held=len(orphan.held))
        return out + [(client, msg) for msg in orphan.held]

    def expired(self, now: float) -> list[str]:
        """Clients that did not resume within the bound (forgotten here; the caller cancels their requests)."""
        late = [c for c, o in self._by_client.items() if now - o.since > self.bound_s]
        for client in late:
            log.warning("client_not_resumed", request_id=self._by_client.pop(client).request_id,
                        bound_s=self.bound_s)
        return late

    def _gap_text(self, committed: tuple[int, ...], received: int) -> str:
        if self._decode is None:
            return ""
        before, after = self._decode(list(committed[:received])), self._decode(list(committed))
        return after[len(before):] if after.startswith(before) else ""
