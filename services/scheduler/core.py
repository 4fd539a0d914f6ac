"""The scheduler: each request's life, the canonical draft tree, and every prune/expand decision.

Several requests run at once, each keyed by its request id; admission (validation, the in-flight,
queue and KV-memory limits) decides which start, and a FIFO queue holds the rest.

Per verification it extends the output, stops exactly at EOS or ``max_new_tokens``, decides which
nodes survive (the next token's subtree) or that the round ends, and issues one Prune to every
service and one Expand (a credit: one segment left the ring) to the drafter. It decides each verdict
at once, over the nodes it knows: nodes still being reported survive a prune iff their parent does
(``Prune.known``), and a report of an older epoch is brought forward through the prunes since, so its
tree stays a prefix of the drafter's at every epoch. Only a verdict over nodes not yet reported (its
segment overtook the report) waits, for that report alone.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from common.cluster.settings import Admission
from common.models.text_stream import TextStream
from common.observability import trace
from common.speculation.modes import DraftSettings, Mode
from common.speculation.tree import DraftTree, plan_prune, prune_tree
from common.wire.client import GenerateChunk, GenerateReply, GenerateRequest
from common.wire.codec import Message
from common.wire.commands import EndRequest, Expand, Prune, StartRequest
from common.wire.ordering import OrderError, PruneLog
from common.wire.reports import DraftReport, Fault, Ready, StageStats, Verdict, VerdictKind
from services.scheduler.admission import MIB, Capacity, busy_reason, invalid_reason, kv_need_bytes
from services.scheduler.attempts import attempt_id, request_id_of
from services.scheduler.commands import CommandLog
from services.scheduler.job import Job, TextCodec
from services.scheduler.stats import request_stats

Outbound = tuple[str, Message]
CLIENT = "client:"  # destination prefix; the rest names the client connection


class SchedulerCore:
    def __init__(
        self,
        services: Sequence[str],
        codec: TextCodec | None,
        eos_ids: Sequence[int],
        draft: DraftSettings,
        prefill_chunk: int = 64,
        admission: Admission | None = None,
        capacity: Capacity | None = None,
        default_mode: str = "flowspec",
        first_cmd_seq: int = 0,
    ) -> None:
        self._services = list(services)  # every ring service; "drafter" among them
        self._default_mode = default_mode  # a request that names no mode gets the cluster's
        self._codec = codec
        self._eos = frozenset(eos_ids)
        self._draft = draft
        self._prefill_chunk = prefill_chunk
        self._admission = admission or Admission()
        self._capacity = capacity or Capacity()
        self._commands = CommandLog(self._services, first_cmd_seq)
        self._ids = itertools.count(1)
        self._queue: deque[Job] = deque()  # admitted and valid, waiting for a slot (FIFO)
        self._jobs: dict[str, Job] = {}  # in the ring, by request id
        self.ready: dict[str, int] = {}

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    @property
    def jobs(self) -> dict[str, Job]:
        """Requests in the ring (until their reply is sent), by request id."""
        return self._jobs

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def waiting(self) -> tuple[Job, ...]:
        """Admitted requests waiting for a slot, oldest first."""
        return tuple(self._queue)

    @property
    def codec(self) -> TextCodec | None:
        return self._codec

    def adopt(self, jobs: Sequence[Job], last_id: int) -> None:
        """Requests a restarted scheduler recovered from its journal join the ring's books (to be interrupted
        and resumed); new request ids continue past ``last_id``."""
        self._ids = itertools.count(last_id + 1)
        for job in jobs:
            job.kv_bytes = kv_need_bytes(len(job.prompt), job.request.max_new_tokens, self._draft, self._capacity)
            self._jobs[job.request_id] = job

    @property
    def running(self) -> tuple[str, ...]:
        """Ids of the requests in progress."""
        return tuple(job.request_id for job in self._jobs.values() if job.reply is None)

    def submit(self, client: str, request: GenerateRequest) -> list[Outbound]:
        """Validate, then start, queue, or answer busy; an invalid request is answered at once."""
        if not isinstance(request.ref, str):  # echoed in every answer: a string only
            return [(client, GenerateReply(ok=False, error="ref must be a string", code="invalid"))]
        if not request.mode:
            request = replace(request, mode=self._default_mode)
        prompt = tuple(request.prompt_ids)
        if not prompt and request.prompt:
            if self._codec is None:
                return [(client, _refused(request, "no tokenizer: send prompt_ids"))]
            prompt = tuple(self._codec.encode(request.prompt, request.raw))
        error = invalid_reason(request, len(prompt), self._capacity, self._admission.max_prompt_tokens)
        kv_bytes = kv_need_bytes(len(prompt), request.max_new_tokens, self._draft, self._capacity)
        budget = int(self._admission.kv_budget_mib * MIB)
        if not error and budget and kv_bytes > budget:
            error = (f"the request needs about {kv_bytes / MIB:.0f} MiB of KV cache per stage, more than the "
                     f"budget of {self._admission.kv_budget_mib:g} MiB")
        if error:
            return [(client, _refused(request, error))]
        starts_now = not self._queue and self._fits(kv_bytes)
        if not starts_now and len(self._queue) >= self._admission.max_queued:
            retry = self._admission.retry_after_s
            error = busy_reason(len(self._jobs), len(self._queue), retry)
            return [(client, _refused(request, error, code="busy", retry_after_s=retry))]
        self._queue.append(Job(client, request, f"r{next(self._ids)}", prompt, kv_bytes))
        return self._admit()

    def handle(self, msg: Message) -> list[Outbound]:
        if isinstance(msg, Ready):
            self.ready[msg.service] = msg.pid
            return []
        if isinstance(msg, Fault) and msg.lost:
            return self._lost_commands(msg)
        job = self._jobs.get(getattr(msg, "request_id", ""))
        if job is None:
            return []  # a report of a cancelled or failed request still in flight
        if isinstance(msg, StageStats):
            job.service_stats[msg.service] = {"busy_ms": msg.busy_ms, "forwards": msg.forwards, "rows": msg.rows,
                                              "feature_bytes": msg.feature_bytes}
            if job.request.trace:
                job.spans[msg.service] = msg.spans
            return self._maybe_reply(job)
        if job.reply is not None:
            return []  # finishing: late verdicts and reports of the ended request
        if isinstance(msg, Fault):
            return self._finish(job, error=f"{msg.service}: {msg.error}")
        if isinstance(msg, Verdict):
            job.verdicts.append(msg)
        elif isinstance(msg, DraftReport):
            self._add_report(job, msg)
        else:
            raise OrderError(f"the scheduler does not handle {msg.KIND} messages")
        out: list[Outbound] = []
        while job.reply is None and job.verdicts and self._known(job, job.verdicts[0]):
            with trace.span("schedule", job.request_id):
                out.extend(self._decide(job, job.verdicts.popleft()))
        return out

    @staticmethod
    def _add_report(job: Job, report: DraftReport) -> None:
        """Append a report's nodes that survived the prunes issued since it was drafted."""
        if report.epoch > job.epoch:
            raise OrderError(f"draft report of epoch {report.epoch} while the tree is at epoch {job.epoch}")
        now = job.log.bring_forward(report.epoch, report.first, report.parents)
        job.draft_ms += report.draft_ms
        if not now.rows:
            return
        if now.first != len(job.tree):
            raise OrderError(f"draft report brings node {now.first} but the tree holds {len(job.tree)}")
        job.tree = job.tree.appended([report.tokens[r] for r in now.rows], now.parents, [0.0] * len(now.rows))

    @staticmethod
    def _known(job: Job, verdict: Verdict) -> bool:
        """Whether every node of the verdict's segment (nodes 0 .. rows-1 of its epoch) was reported."""
        return verdict.kind is not VerdictKind.TREE or verdict.epoch != job.epoch or verdict.rows <= len(job.tree)

    def fail(self, request_id: str, error: str, code: str = "failed") -> list[Outbound]:
        """End one running request with an error (a protocol violation in one of its reports)."""
        job = self._jobs.get(request_id)
        if job is None:
            return []
        if job.reply is not None:
            return self._reply(job)
        return self._finish(job, error=error, code=code)

    def expire(self, now: float, timeout_s: float) -> list[Outbound]:
        """Fail every request, queued or in the ring, submitted more than ``timeout_s`` ago (its own deadline)."""
        error = f"request timed out {timeout_s:g} s after its submission (this cluster's request_timeout_s)"
        out: list[Outbound] = []
        for job in [j for j in self._queue if now - j.submitted > timeout_s]:  # never started: nothing to end
            self._queue.remove(job)
            out.append((job.client, _failed(job, f"{error}, still queued", "timeout")))
        late = [job.request_id for job in self._jobs.values() if now - job.submitted > timeout_s]
        return out + [o for request_id in late for o in self.fail(request_id, error, code="timeout")]

    def cancel(self, client: str) -> list[Outbound]:
        """Drop every request of ``client``, queued or running; running ones end on every service."""
        out: list[Outbound] = []
        for job in [j for j in self._queue if j.client == client]:
            self._queue.remove(job)
            out.append((client, _failed(job, "cancelled", "cancelled")))
        for job in [j for j in self._jobs.values() if j.client == client]:
            if job.reply is None:
                out += self._end_everywhere(job, "cancelled")
            trace.finish(job.request_id)
            del self._jobs[job.request_id]
            out.append((client, _failed(job, "cancelled", "cancelled")))
        return out + self._admit()

    def interrupt(self, request_id: str, reason: str) -> list[Outbound]:
        """End a running request's attempt on every service (one of them died); its committed output stays.
        One that had finished is answered now, without the stats the dead service would have sent."""
        job = self._jobs.get(request_id)
        if job is None:
            return []
        if job.reply is not None:
            return self._reply(job)
        trace.finish(job.request_id)
        return self._end_everywhere(job, reason)

    def resume(self, request_id: str) -> list[Outbound]:
        """Start an interrupted request again through the ring, under a new ring id, from its committed
        context; its output and stream continue where they were."""
        job = self._jobs.pop(request_id, None)
        if job is None:
            return []
        job.replays += 1
        job.request_id = attempt_id(request_id, job.replays)
        job.tree, job.log = DraftTree((), (), ()), PruneLog()
        job.verdicts.clear()
        job.service_stats.clear()
        return self._start(job)

    # ------------------------------------------------------------------------------------------------
    def _fits(self, kv_bytes: int) -> bool:
        if len(self._jobs) >= self._admission.max_in_flight:
            return False
        budget = int(self._admission.kv_budget_mib * MIB)
        return not budget or sum(j.kv_bytes for j in self._jobs.values()) + kv_bytes <= budget

    def _admit(self) -> list[Outbound]:
        """Start queued requests, oldest first, while they fit (a later one never overtakes)."""
        out: list[Outbound] = []
        while self._queue and self._fits(self._queue[0].kv_bytes):
            out += self._start(self._queue.popleft())
        return out

    def _start(self, job: Job) -> list[Outbound]:
        request = job.request
        job.started = job.started or time.perf_counter()  # a replay keeps its deadline
        if request.stream and self._codec is not None and job.text is None:  # a replay's stream goes on
            job.text = TextStream(self._codec.decode)
        self._jobs[job.request_id] = job
        if request.trace:
            trace.start(job.request_id)
        start: dict[str, Any] = {  # the committed context: the prompt, and the output so far when replayed
            "request_id": job.request_id, "prompt": (*job.prompt, *job.output),
            "max_new_tokens": request.max_new_tokens - len(job.output),
            "temperature": request.temperature, "seed": request.seed, "draft": self._draft,
            "prefill_chunk": self._prefill_chunk, "mode": request.mode, "link_mbps": request.link_mbps,
            "link_latency_ms": request.link_latency_ms, "trace": request.trace,
        }
        return [(name, StartRequest(cmd_seq=self._commands.next(name, job.request_id), **start))
                for name in self._services]

    def _lost_commands(self, fault: Fault) -> list[Outbound]:
        """A service found a gap in its commands: the requests the lost ones carried fail, no other."""
        first, last = fault.lost[0], fault.lost[-1]
        out: list[Outbound] = []
        for request_id in self._commands.owners(fault.service, first, last):
            out += self.fail(request_id, f"{fault.error}: a command of this request was lost")
        return out

    def _decide(self, job: Job, verdict: Verdict) -> list[Outbound]:
        if verdict.kind is VerdictKind.NOOP:
            job.noops += 1
            return self._expand(job)
        if verdict.epoch != job.epoch or verdict.round != job.round:
            raise OrderError(f"verdict for epoch {verdict.epoch} while the tree is at epoch {job.epoch}")
        if verdict.kind is VerdictKind.PREFILL and job.expect is not None:  # resumed from the journal
            expected, job.expect = job.expect, None
            if verdict.next_token != expected:
                return self._finish(job, error=(
                    f"request {request_id_of(job.request_id)} failed: after the scheduler restarted, the ring "
                    f"re-derived token {verdict.next_token} where the journal committed {expected}"))
        if verdict.kind is VerdictKind.PREFILL:
            job.prefilled_at = job.prefilled_at or time.perf_counter()
            accepted: tuple[int, ...] = ()
            new_tokens: tuple[int, ...] = (verdict.next_token,)
            keep: tuple[int, ...] = ()
        else:
            accepted = verdict.accepted
            if tuple(job.tree.tokens[i] for i in accepted) != verdict.accepted_tokens:
                raise OrderError("verdict tokens differ from the scheduler's tree")
            job.steps += 1
            job.accepted += len(accepted) - 1
            new_tokens = (*verdict.accepted_tokens[1:], verdict.next_token)
            job.step_tokens += len(new_tokens)
            # Chunk-PP and autoregressive decoding verify each tree whole: every verification ends the round.
            continues = Mode(job.request.mode).continues_round
            keep = plan_prune(job.tree, accepted, verdict.next_token) if continues else ()
        job.output.extend(new_tokens)
        stop = self._stop(job)
        streamed = self._stream(job, final=stop)
        if stop:
            return streamed + self._finish(job)
        event: dict[str, Any] = {
            "request_id": job.request_id, "epoch": job.epoch + 1, "round": job.round + (0 if keep else 1),
            "accepted": accepted,
            "keep": keep, "new_tokens": new_tokens, "next_token": verdict.next_token, "known": len(job.tree),
        }
        prunes = [Prune(cmd_seq=self._commands.next(name, job.request_id), **event)  # one event, own cmd_seq
                  for name in self._services]
        job.log.record(prunes[0])  # the job's epoch and round move on with it
        out: list[Outbound] = list(zip(self._services, prunes, strict=True))
        job.tree = prune_tree(job.tree, keep) if keep else DraftTree((), (), ())
        return streamed + out + self._expand(job)

    def _expand(self, job: Job) -> list[Outbound]:
        return [("drafter", Expand(request_id=job.request_id, cmd_seq=self._commands.next("drafter", job.request_id),
                                    epoch=job.epoch))]

    def _stop(self, job: Job) -> bool:
        limit = job.request.max_new_tokens
        for i, token in enumerate(job.output[:limit]):
            if token in self._eos:
                del job.output[i + 1 :]
                return True
        if len(job.output) >= limit:
            del job.output[limit:]
            return True
        return False

    def _stream(self, job: Job, final: bool) -> list[Outbound]:
        """A chunk of the output committed since the last one (the last flushes held-back text)."""
        if not job.request.stream:
            return []
        new = tuple(job.output[job.streamed :])
        job.streamed = len(job.output)
        text = job.text.push(job.output, final) if job.text is not None else ""
        if not new and not text:
            return []
        return [(job.client, GenerateChunk(request_id=request_id_of(job.request_id), token_ids=new, text=text,
                                           ref=job.request.ref))]

    def _finish(self, job: Job, error: str = "", code: str = "failed") -> list[Outbound]:
        job.finished_at = time.perf_counter()
        text = self._codec.decode(job.output) if self._codec and not error else ""
        job.reply = GenerateReply(ok=not error, text=text, token_ids=tuple(job.output), error=error,
                                  code=code if error else "", request_id=request_id_of(job.request_id),
                                  ref=job.request.ref)
        out = self._end_everywhere(job, error or "done")
        if error:
            return out + self._reply(job)
        return out + self._maybe_reply(job)

    def _end_everywhere(self, job: Job, reason: str) -> list[Outbound]:
        return [
            (name, EndRequest(request_id=job.request_id, cmd_seq=self._commands.next(name, job.request_id),
                                reason=reason))
            for name in self._services
        ]

    def _maybe_reply(self, job: Job) -> list[Outbound]:
        waiting_for = [s for s in self._services if s not in job.service_stats]
        if job.reply is None or waiting_for:
            return []
        return self._reply(job)

    def _reply(self, job: Job) -> list[Outbound]:
        assert job.reply is not None
        reply = replace(job.reply, stats=request_stats(job))
        del self._jobs[job.request_id]
        return [(job.client, reply), *self._admit()]


def _refused(request: GenerateRequest, error: str, code: str = "invalid", retry_after_s: float = 0.0) -> GenerateReply:
    """The answer to a request that is never admitted (invalid, or the queue full)."""
    return GenerateReply(ok=False, error=error, code=code, retry_after_s=retry_after_s, ref=request.ref)


def _failed(job: Job, error: str, code: str) -> GenerateReply:
    """The reply of a request that ends before its output is done (queued or cancelled)."""
    return GenerateReply(ok=False, error=error, code=code, request_id=request_id_of(job.request_id), ref=job.request.ref)
