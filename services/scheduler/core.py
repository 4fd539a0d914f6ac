"""The scheduler: each request's life, the canonical draft tree, and every prune/expand decision.

Per verification it extends the output, stops exactly at EOS or ``max_new_tokens``, decides which
nodes survive (the next token's subtree) or that the round ends, and issues one Prune to every
service and one Expand to the drafter. It decides on one verdict at a time, after the drafter has
reported the nodes of the previous expansion, so its tree and the drafter's never diverge.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.ordering import OrderError
from common.protocol import (
    MODES,
    DraftReport,
    DraftSettings,
    EndRequest,
    Expand,
    Fault,
    GenerateReply,
    GenerateRequest,
    Message,
    Prune,
    Ready,
    StageStats,
    StartRequest,
    Verdict,
)
from common.tree import DraftTree, plan_prune, prune_tree

Outbound = tuple[str, Message]
CLIENT = "client:"  # destination prefix; the rest names the client connection


@dataclass(frozen=True)
class TextCodec:
    """Prompt text -> token ids and token ids -> text, supplied by the shell (the tokenizer)."""

    encode: Callable[[str, bool], list[int]]
    decode: Callable[[Sequence[int]], str]


@dataclass
class _Job:
    client: str
    request: GenerateRequest
    request_id: str
    prompt: tuple[int, ...]
    started: float
    tree: DraftTree = field(default_factory=lambda: DraftTree((), (), ()))
    epoch: int = 0
    round: int = 0
    output: list[int] = field(default_factory=list)
    verdicts: deque[Verdict] = field(default_factory=deque)
    awaiting_draft: bool = False
    prefilled_at: float = 0.0
    steps: int = 0
    noops: int = 0
    accepted: int = 0
    step_tokens: int = 0  # output tokens produced by tree verifications
    draft_ms: float = 0.0
    finished_at: float = 0.0
    reply: GenerateReply | None = None  # set when finished; sent once every service reported stats
    service_stats: dict[str, dict[str, float]] = field(default_factory=dict)


class SchedulerCore:
    def __init__(
        self,
        services: Sequence[str],
        codec: TextCodec | None,
        eos_ids: Sequence[int],
        draft: DraftSettings,
        prefill_chunk: int = 64,
    ) -> None:
        self._services = list(services)  # every ring service; "drafter" among them
        self._codec = codec
        self._eos = frozenset(eos_ids)
        self._draft = draft
        self._prefill_chunk = prefill_chunk
        self._cmd_seq = dict.fromkeys(self._services, 0)
        self._ids = itertools.count(1)
        self._queue: deque[tuple[str, GenerateRequest]] = deque()
        self._job: _Job | None = None
        self.ready: dict[str, int] = {}

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def running(self) -> tuple[str, ...]:
        """Ids of the requests in progress."""
        return (self._job.request_id,) if self._job is not None else ()

    def submit(self, client: str, request: GenerateRequest) -> list[Outbound]:
        self._queue.append((client, request))
        return self._next_job() if self._job is None else []

    def handle(self, msg: Message) -> list[Outbound]:
        if isinstance(msg, Ready):
            self.ready[msg.service] = msg.pid
            return []
        job = self._job
        if job is None or getattr(msg, "request_id", None) != job.request_id:
            return []
        if isinstance(msg, StageStats):
            job.service_stats[msg.service] = {"busy_ms": msg.busy_ms, "forwards": msg.forwards, "rows": msg.rows}
            return self._maybe_reply(job)
        if job.reply is not None:
            return []  # finishing: late verdicts and reports of the ended request
        if isinstance(msg, Fault):
            return self._finish(job, error=f"{msg.service}: {msg.error}")
        if isinstance(msg, Verdict):
            job.verdicts.append(msg)
        elif isinstance(msg, DraftReport):
            if not job.awaiting_draft or msg.epoch != job.epoch or msg.first != len(job.tree):
                raise OrderError(f"draft report epoch {msg.epoch} first {msg.first} does not fit the tree")
            job.tree = job.tree.appended(msg.tokens, msg.parents, [0.0] * len(msg.tokens))
            job.awaiting_draft = False
            job.draft_ms += msg.draft_ms
        else:
            raise OrderError(f"the scheduler does not handle {msg.KIND} messages")
        out: list[Outbound] = []
        while job.reply is None and job.verdicts and not job.awaiting_draft:
            out.extend(self._decide(job, job.verdicts.popleft()))
        return out

    def fail_current(self, error: str) -> list[Outbound]:
        """End the running request with an error (the shell calls this on a deadline)."""
        if self._job is None:
            return []
        if self._job.reply is not None:
            return self._reply(self._job)
        return self._finish(self._job, error=error)

    # ------------------------------------------------------------------------------------------------
    def _next_job(self) -> list[Outbound]:
        while self._queue:
            client, request = self._queue.popleft()
            prompt = tuple(request.prompt_ids)
            if not prompt:
                if self._codec is None:
                    return [(client, GenerateReply(ok=False, error="no tokenizer: send prompt_ids"))]
                prompt = tuple(self._codec.encode(request.prompt, request.raw))
            if not prompt or request.max_new_tokens < 1:
                return [(client, GenerateReply(ok=False, error="empty prompt or max_new_tokens < 1"))]
            if request.mode not in MODES:
                return [(client, GenerateReply(ok=False, error=f"mode {request.mode!r} is not one of {', '.join(MODES)}"))]
            job = self._job = _Job(client, request, f"r{next(self._ids)}", prompt, time.perf_counter())
            start = {
                "request_id": job.request_id, "prompt": prompt, "max_new_tokens": request.max_new_tokens,
                "temperature": request.temperature, "seed": request.seed, "draft": self._draft,
                "prefill_chunk": self._prefill_chunk, "mode": request.mode, "link_mbps": request.link_mbps,
                "link_latency_ms": request.link_latency_ms,
            }
            return [(name, StartRequest(cmd_seq=self._next_seq(name), **start)) for name in self._services]
        return []

    def _next_seq(self, name: str) -> int:
        seq = self._cmd_seq[name]
        self._cmd_seq[name] = seq + 1
        return seq

    def _decide(self, job: _Job, verdict: Verdict) -> list[Outbound]:
        if verdict.kind == "noop":
            job.noops += 1
            return self._expand(job)
        if verdict.epoch != job.epoch or verdict.round != job.round:
            raise OrderError(f"verdict for epoch {verdict.epoch} while the tree is at epoch {job.epoch}")
        if verdict.kind == "prefill":
            job.prefilled_at = time.perf_counter()
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
            continues = job.request.mode in ("flowspec", "pipedec")
            keep = plan_prune(job.tree, accepted, verdict.next_token) if continues else ()
        job.output.extend(new_tokens)
        if self._stop(job):
            return self._finish(job)
        job.epoch += 1
        job.round += 0 if keep else 1
        event = {
            "request_id": job.request_id, "epoch": job.epoch, "round": job.round, "accepted": accepted,
            "keep": keep, "new_tokens": new_tokens, "next_token": verdict.next_token,
        }
        out: list[Outbound] = [(name, Prune(cmd_seq=self._next_seq(name), **event)) for name in self._services]
        job.tree = prune_tree(job.tree, keep) if keep else DraftTree((), (), ())
        return out + self._expand(job)

    def _expand(self, job: _Job) -> list[Outbound]:
        job.awaiting_draft = True
        return [("drafter", Expand(request_id=job.request_id, cmd_seq=self._next_seq("drafter"), epoch=job.epoch))]

    def _stop(self, job: _Job) -> bool:
        limit = job.request.max_new_tokens
        for i, token in enumerate(job.output[:limit]):
            if token in self._eos:
                del job.output[i + 1 :]
                return True
        if len(job.output) >= limit:
            del job.output[limit:]
            return True
        return False

    def _finish(self, job: _Job, error: str = "") -> list[Outbound]:
        job.finished_at = time.perf_counter()
        text = self._codec.decode(job.output) if self._codec and not error else ""
        job.reply = GenerateReply(ok=not error, text=text, token_ids=tuple(job.output), error=error)
        out: list[Outbound] = [
            (name, EndRequest(request_id=job.request_id, cmd_seq=self._next_seq(name), reason=error or "done"))
            for name in self._services
        ]
        if error:
            return out + self._reply(job)
        return out + self._maybe_reply(job)

    def _maybe_reply(self, job: _Job) -> list[Outbound]:
        waiting_for = [s for s in self._services if s != "drafter" and s not in job.service_stats]
        if job.reply is None or waiting_for:
            return []
        return self._reply(job)

    def _reply(self, job: _Job) -> list[Outbound]:
        assert job.reply is not None
        reply = GenerateReply(
            ok=job.reply.ok, text=job.reply.text, token_ids=job.reply.token_ids, stats=self._stats(job),
            error=job.reply.error,
        )
        self._job = None
        return [(job.client, reply), *self._next_job()]

    def _stats(self, job: _Job) -> dict[str, Any]:
        prefilled = job.prefilled_at or job.finished_at
        decode_s = max(job.finished_at - prefilled, 1e-9)
        wall_s = job.finished_at - job.started
        new = len(job.output)
        return {
            "request_id": job.request_id,
            "mode": job.request.mode,
            "prompt_tokens": len(job.prompt),
            "new_tokens": new,
            "steps": job.steps,
            "noop_steps": job.noops,
            "rounds": job.round,
            "accepted_per_step": job.accepted / job.steps if job.steps else 0.0,
            "tokens_per_step": job.step_tokens / job.steps if job.steps else 0.0,
            "tokens_per_round": job.step_tokens / job.round if job.round else 0.0,
            "prefill_ms": (prefilled - job.started) * 1e3,
            "decode_ms": decode_s * 1e3,
            "wall_ms": wall_s * 1e3,
            "decode_tokens_per_s": (new - 1) / decode_s if new > 1 else 0.0,
            "tokens_per_s": new / wall_s if wall_s > 0 else 0.0,
            "drafter_ms_per_step": job.draft_ms / max(job.steps + job.noops, 1),
            "drafter_busy_ms": job.draft_ms,
            "services": dict(job.service_stats),
        }
