"""OpenAI request bodies (what flowring honours, what it refuses) and the JSON it answers with."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ErrorType = Literal["invalid_request_error", "rate_limit_error", "server_error", "service_unavailable"]


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type_: ErrorType = "invalid_request_error",
                 param: str | None = None, code: str | None = None, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.retry_after_s = retry_after_s  # sent as the Retry-After header when set

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Sampling(BaseModel):
    """Fields shared by completions and chat; unknown fields are ignored, as OpenAI's own server does."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def refuse_unsupported(self) -> None:
        """A clear 400 for every option flowring does not implement exactly."""
        if self.top_p is not None and self.top_p != 1.0:
            raise ApiError(400, "top_p is not supported: verification samples the full target distribution; "
                                "leave top_p unset or 1", param="top_p")
        if self.n != 1:
            raise ApiError(400, "only n=1 is supported", param="n")
        if self.presence_penalty or self.frequency_penalty:
            raise ApiError(400, "presence and frequency penalties are not supported", param="presence_penalty")
        if self.logprobs:
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        if len(self.stops()) > 4:
            raise ApiError(400, "at most 4 stop sequences", param="stop")


class CompletionBody(_Sampling):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False

    def prompt_text_or_ids(self) -> str | list[int]:
        if not self.prompt or self.prompt == [""]:
            raise ApiError(400, "empty prompt: send some text or token ids", param="prompt")
        if isinstance(self.prompt, str) or (self.prompt and all(isinstance(p, int) for p in self.prompt)):
            return self.prompt
        if len(self.prompt) == 1 and isinstance(self.prompt[0], str):
            return self.prompt[0]
        raise ApiError(400, "prompt must be one string or one list of token ids (no batches)", param="prompt")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = [p.get("text") for p in self.content if p.get("type") == "text"]
        if len(parts) != len(self.content):
            raise ApiError(400, "only text content parts are supported", param="messages")
        return "".join(parts)


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None

    def conversation(self) -> list[dict[str, str]]:
        if self.tools:
            raise ApiError(400, "tools are not supported", param="tools")
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(id_: str, created: int, model: str, text: str, finish: str | None, use: dict | None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    body = {"id": id_, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
    return {**body, "usage": use} if use is not None else body


def chat(id_: str, created: int, model: str, text: str, finish: str | None, use: dict | None) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
              "finish_reason": finish}
    body = {"id": id_, "object": "chat.completion", "created": created, "model": model, "choices": [choice]}
    return {**body, "usage": use} if use is not None else body


def chat_chunk(id_: str, created: int, model: str, delta: dict, finish: str | None,
               use: dict | None = None) -> dict:
    choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if use is None else []
    body = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    return {**body, "usage": use} if use is not None else body


def completion_chunk(id_: str, created: int, model: str, text: str, finish: str | None,
                     use: dict | None = None) -> dict:
    choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}] if use is None else []
    body = {"id": id_, "object": "text_completion", "created": created, "model": model, "choices": choices}
    return {**body, "usage": use} if use is not None else body
