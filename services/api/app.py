"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Every generation streams from the ring (so stop strings end it early and the ring request is
cancelled); non-streamed answers are assembled here. Prompts are tokenized here (chat through the
model's chat template) and sent as token ids, so usage counts are exact.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from common.models.modeling import load_model_spec, load_tokenizer
from common.models.modeling.tokenizer import encode_chat, encode_prompt
from common.wire.client import GenerateChunk, GenerateReply, GenerateRequest
from common.wire.curve import ClientCurve
from services.api import dashboard, schemas
from services.api.ring import exchange
from services.api.schemas import ApiError, ChatBody, CompletionBody
from services.api.stops import StopMatcher
from services.client import DEFAULT_MAX_MESSAGE_BYTES, ClusterUnavailable, fresh_seed

log = structlog.get_logger()

_REPLY_ERRORS: dict[str, tuple[int, schemas.ErrorType]] = {
    "invalid": (400, "invalid_request_error"),
    "busy": (429, "rate_limit_error"),
    "timeout": (504, "server_error"),
}


@dataclass(frozen=True)
class ApiSettings:
    scheduler_endpoint: str
    model_dir: str  # the base model: tokenizer, chat template, EOS tokens
    model_name: str  # the id /v1/models lists
    mode: str = ""  # "": the cluster's default mode
    default_max_tokens: int = 256  # chat requests that set no limit
    timeout_s: float = 600.0
    api_key: str = ""  # when set, every request must carry "Authorization: Bearer <api_key>"
    scheduler_curve: ClientCurve | None = None  # a LAN cluster: the clients' CURVE keys for the scheduler
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # the cluster's limit on a message from the scheduler


@dataclass
class _Generation:
    prompt_ids: list[int]
    body: CompletionBody | ChatBody
    max_tokens: int
    tokens: int = 0  # completion tokens received
    finish: str | None = None


def create_app(settings: ApiSettings) -> FastAPI:
    tokenizer = load_tokenizer(Path(settings.model_dir))
    eos = frozenset(load_model_spec(Path(settings.model_dir)).eos_token_ids)

    recorder = dashboard.Recorder()

    def require_key(request: Request) -> None:
        """A route dependency, not a middleware: a middleware would hide an HTTP client's disconnect. The
        dashboard's cookie carries the same key (services/api/dashboard)."""
        if settings.api_key and not authorized(request.headers.get("authorization", ""), settings.api_key) \
                and not dashboard.cookie_holds(request, settings.api_key):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    app = FastAPI(title="flowring", description="OpenAI-compatible API over a flowring cluster",
                  dependencies=[Depends(require_key)])

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if exc.retry_after_s else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request body"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return JSONResponse(ApiError(400, f"{param or 'body'}: {first['msg']}", param=param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:  # unknown path, wrong method
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), type_).body(), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug outside a route's own guard
        request_id = request.headers.get("x-request-id", "")
        log.error("api_route_failed", path=request.url.path, request_id=request_id, error=repr(exc), exc_info=exc)
        return JSONResponse(_internal(exc, request_id).body(), status_code=500)

    def check_model(body: CompletionBody | ChatBody) -> None:
        if body.model and body.model != settings.model_name:
            raise ApiError(404, f"the model {body.model!r} does not exist: this server serves "
                                f"{settings.model_name!r}", param="model", code="model_not_found")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "flowring"}]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionBody, request: Request) -> dict | EventSourceResponse:
        id_ = f"cmpl-{uuid.uuid4().hex}"
        with _guarded(id_):
            check_model(body)
            body.refuse_unsupported()
            if body.echo:
                raise ApiError(400, "echo is not supported", param="echo")
            prompt = body.prompt_text_or_ids()
            ids = prompt if isinstance(prompt, list) else encode_prompt(tokenizer, prompt, raw=True)
            gen = _Generation(ids, body, body.max_tokens or settings.default_max_tokens)
            return await _answer(gen, request, id_, schemas.completion, schemas.completion_chunk)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatBody, request: Request) -> dict | EventSourceResponse:
        id_ = f"chatcmpl-{uuid.uuid4().hex}"
        with _guarded(id_):
            check_model(body)
            body.refuse_unsupported()
            ids = _encode_conversation(tokenizer, body.conversation())
            gen = _Generation(ids, body, body.max_completion_tokens or body.max_tokens or settings.default_max_tokens)
            return await _answer(gen, request, id_, schemas.chat, _chat_chunk)

    async def _answer(gen: _Generation, request: Request, id_: str, whole, chunk) -> dict | EventSourceResponse:
        created, model = int(time.time()), settings.model_name
        deltas = _deltas(gen, request)
        try:
            first = await anext(deltas)  # errors before any output (invalid, busy) get their HTTP status
        except StopAsyncIteration:
            first = ""
        if not gen.body.stream:
            async with aclosing(deltas):
                text = first + "".join([d async for d in deltas])
            return whole(id_, created, model, text, gen.finish, schemas.usage(len(gen.prompt_ids), gen.tokens))

        async def events() -> AsyncIterator[dict]:
            async with aclosing(deltas):
                yield {"data": _json(chunk(id_, created, model, first, None))}
                try:
                    async for delta in deltas:
                        yield {"data": _json(chunk(id_, created, model, delta, None))}
                except ApiError as exc:  # the ring failed after the stream began: say so in the stream
                    yield {"data": _json(exc.body())}
                    return
                except Exception as exc:  # a bug mid-stream: logged with the request id, said in the stream
                    log.error("api_route_failed", request_id=id_, error=repr(exc), exc_info=exc)
                    yield {"data": _json(_internal(exc, id_).body())}
                    return
            yield {"data": _json(chunk(id_, created, model, "", gen.finish))}
            if gen.body.include_usage():
                use = schemas.usage(len(gen.prompt_ids), gen.tokens)
                yield {"data": _json(chunk(id_, created, model, "", None, use))}
            yield {"data": "[DONE]"}

        return EventSourceResponse(events(), ping=15)

    async def _deltas(gen: _Generation, request: Request) -> AsyncIterator[str]:
        """Text deltas of the ring's output, cut at a stop string; sets ``gen.finish`` and ``gen.tokens``."""
        body = gen.body
        ring_request = GenerateRequest(
            prompt="", prompt_ids=tuple(gen.prompt_ids), max_new_tokens=gen.max_tokens,
            temperature=body.temperature,
            seed=fresh_seed() if body.seed is None else body.seed, mode=settings.mode, stream=True,
            trace=request.headers.get(dashboard.TRACE_HEADER) == "1",  # the dashboard's chat: its timeline
        )
        stops = StopMatcher(body.stops())
        messages = exchange(settings.scheduler_endpoint, ring_request, timeout_s=settings.timeout_s,
                            client_gone=request.is_disconnected, curve=settings.scheduler_curve,
                            max_bytes=settings.max_message_bytes)
        last = -1
        async with aclosing(messages):
            try:
                async for msg in messages:
                    if isinstance(msg, GenerateReply):
                        recorder.finished(msg.ok, msg.stats)
                        _raise_for(msg)
                        gen.finish = "length" if gen.tokens >= gen.max_tokens and last not in eos else "stop"
                        yield stops.flush()
                        return
                    assert isinstance(msg, GenerateChunk)
                    gen.tokens += len(msg.token_ids)
                    recorder.tokens(len(msg.token_ids))
                    last = msg.token_ids[-1] if msg.token_ids else last
                    yield stops.feed(msg.text)
                    if stops.stopped:  # leaving the loop closes the exchange: the ring request is cancelled
                        gen.finish = "stop"
                        return
            except ClusterUnavailable as exc:
                raise ApiError(503, str(exc), "service_unavailable") from exc

    dashboard.install(app, api_key=settings.api_key, endpoint=settings.scheduler_endpoint,
                      curve=settings.scheduler_curve, model=settings.model_name, recorder=recorder)
    return app


def authorized(header: str, api_key: str) -> bool:
    """Whether an ``Authorization`` header carries ``api_key`` as a bearer token (compared in constant time)."""
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


@contextmanager
def _guarded(request_id: str) -> Iterator[None]:
    """A route's unexpected exception becomes a 500 in OpenAI's shape, logged with the request id."""
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            yield
        except ApiError:
            raise
        except Exception as exc:
            log.error("api_route_failed", request_id=request_id, error=repr(exc), exc_info=exc)
            raise _internal(exc, request_id) from exc


def _internal(exc: Exception, request_id: str) -> ApiError:
    where = f" (request {request_id})" if request_id else ""
    return ApiError(500, f"internal error{where}: {type(exc).__name__}: {exc}".splitlines()[0], "server_error")


def _encode_conversation(tokenizer, conversation: list[dict[str, str]]) -> list[int]:
    """The chat template's token ids; a model without one takes a single user message as plain text, as
    ``flowring generate`` does, and refuses more."""
    if getattr(tokenizer, "chat_template", None):
        return encode_chat(tokenizer, conversation)
    if len(conversation) == 1 and conversation[0]["role"] == "user":
        return encode_prompt(tokenizer, conversation[0]["content"], raw=True)
    raise ApiError(400, "this model has no chat template: send a single user message (encoded as plain text) "
                        "or use /v1/completions", param="messages", code="no_chat_template")


def _chat_chunk(id_: str, created: int, model: str, text: str, finish: str | None, use: dict | None = None) -> dict:
    delta = {"role": "assistant", "content": text} if finish is None and use is None else {}
    return schemas.chat_chunk(id_, created, model, delta, finish, use)


def _raise_for(reply: GenerateReply) -> None:
    if reply.ok:
        return
    status, type_ = _REPLY_ERRORS.get(reply.code, (500, "server_error"))
    raise ApiError(status, reply.error, type_, code=reply.code or None, retry_after_s=reply.retry_after_s)


def _json(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"))
