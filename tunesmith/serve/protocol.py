"""The OpenAI wire format: request schemas, the error shape, validation of sampling values, response and
stream-chunk builders. No model code here, so the shapes can be read (and checked) in one place.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.serve.work import Finished, SamplingParams

MAX_STOP_SEQUENCES = 4


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Lenient(BaseModel):
    # Clients send fields this server does not implement (logprobs, user, ...): ignore rather than refuse.
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: str
    content: str | list[ContentPart] | None = None


class _Sampling(_Lenient):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class ClassifyRequest(_Lenient):
    model: str
    input: str | list[str]


class ScoreRequest(_Lenient):
    """``/v1/score``: a reward model's score of each answer in ``input`` to the conversation ``messages``."""

    model: str
    input: str | list[str]
    messages: list[ChatMessage] = []


class FeedbackRequest(BaseModel):
    """``/v1/feedback``: a rating of one answer, by the ``id`` its response carried (strict: a typo in a field
    name should be an error, not a silently lost correction)."""

    model_config = ConfigDict(extra="forbid")
    response_id: str
    index: int = 0
    """Which choice of a multi-prompt /v1/completions response; 0 for chat."""
    rating: Literal["up", "down"] | Annotated[int, Field(ge=1, le=5, strict=True)]
    correction: str | None = None
    """The answer the model should have given: becomes an SFT row (``tunesmith data from-feedback``)."""
    comment: str | None = None


def message_dicts(messages: list[ChatMessage], system_prompt: str | None) -> list[dict[str, str]]:
    """Messages as the chat template takes them; the run's system prompt goes first when none is given."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            if any(part.type != "text" or part.text is None for part in content):
                raise APIError(400, "only text content parts are supported", param=f"messages.{i}.content")
            content = "".join(part.text or "" for part in content)
        out.append({"role": message.role, "content": content or ""})
    if not out:
        raise APIError(400, "messages must contain at least one message", param="messages")
    if system_prompt is not None and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def _check_range(value: float, name: str, low: float, high: float, low_open: bool = False) -> None:
    below = value <= low if low_open else value < low
    if below or value > high or math.isnan(value):  # NaN compares False both ways
        bracket = "(" if low_open else "["
        raise APIError(
            400,
            f"{name} must be in {bracket}{low:g}, {high:g}], got {value:g}",
            param=name,
            code="invalid_value",
        )


def sampling_params(
    req: _Sampling, max_tokens: int | None, prompt_tokens: int, context: int, cap: int, default: int
) -> SamplingParams:
    """Validate a request's sampling fields against the server's limits and the model's context.

    Raises:
        APIError: 400 naming the field and the numbers involved.
    """
    if req.n not in (None, 1):
        raise APIError(400, f"n must be 1 (this server returns one choice), got {req.n}", param="n")
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    _check_range(temperature, "temperature", 0.0, 2.0)
    _check_range(top_p, "top_p", 0.0, 1.0, low_open=True)
    if max_tokens is None:
        max_tokens = max(1, min(default, context - prompt_tokens))
    if max_tokens < 1:
        raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    if max_tokens > cap:
        raise APIError(
            400,
            f"max_tokens is too large: {max_tokens}. This server allows at most {cap} completion tokens "
            "per request (tunesmith serve --max-tokens-cap).",
            param="max_tokens",
            code="invalid_value",
        )
    if prompt_tokens + max_tokens > context:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} in the "
            "completion). Please reduce the length of the prompt or max_tokens.",
            param="messages" if isinstance(req, ChatRequest) else "prompt",
            code="context_length_exceeded",
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_SEQUENCES or any(not s for s in stop):
        raise APIError(400, f"stop takes 1 to {MAX_STOP_SEQUENCES} non-empty strings", param="stop")
    if req.seed is not None and not -(2**63) <= req.seed < 2**64:  # what torch.Generator.manual_seed takes
        raise APIError(
            400, f"seed must be a 64-bit integer, got {req.seed}", param="seed", code="invalid_value"
        )
    return SamplingParams(max_tokens, temperature, top_p, stop, req.seed)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_response(cid: str, model: str, done: Finished) -> dict[str, Any]:
    message = {"role": "assistant", "content": done.text}
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": done.finish_reason, "logprobs": None}],
        "usage": usage(done.prompt_tokens, done.completion_tokens),
    }


def completion_response(cid: str, model: str, results: list[Finished]) -> dict[str, Any]:
    choices = [
        {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
        for i, r in enumerate(results)
    ]
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)),
    }


def chat_chunk(
    cid: str, model: str, delta: dict[str, str], finish: str | None = None, use: dict | None = None
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``use`` it is the usage-only chunk (no choices)."""
    choices = (
        [] if use is not None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    )
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    chunk["choices"] = choices
    if use is not None:
        chunk["usage"] = use
    return chunk


def completion_chunk(
    cid: str, model: str, index: int, text: str, finish: str | None = None, use: dict | None = None
) -> dict[str, Any]:
    choice = {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
    chunk = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model}
    chunk["choices"] = [] if use is not None else [choice]
    if use is not None:
        chunk["usage"] = use
    return chunk


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def model_card(served: Any) -> dict[str, Any]:
    card = {"id": served.id, "object": "model", "created": served.created, "owned_by": "tunesmith"}
    card.update({"task": served.task, "kind": served.kind, "context_length": served.context_length})
    if served.label_names:
        card["labels"] = served.label_names
    return card
