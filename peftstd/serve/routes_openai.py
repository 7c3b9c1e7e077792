"""OpenAI-compatible routes for causal LMs: POST /v1/chat/completions and /v1/completions, with server-sent-event
streaming, over the same keys, limits, metrics and request log as the other routes. (GET /v1/models, the list the
`openai` client's `models.list()` reads, is in `app.py`: it lists every model.)

Requests and answers follow OpenAI's API reference: `max_tokens` (or `max_completion_tokens`), `temperature`,
`top_p`, `seed`, `stop`, `n` = 1, `stream` (with `stream_options.include_usage`); `usage` and `finish_reason`
(`stop`, `length`) as OpenAI returns them. Every refusal is OpenAI's error body,
`{"error": {"message", "type", "param", "code"}}`, with a 4xx (503 while loading or full), never a 500.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peftstd.runtime.sampling import Sampling, Sequence
from peftstd.serve.batcher import QueueFull
from peftstd.serve.state import HTTPError, ServerState, log_entry

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 499: "invalid_request_error",
               503: "service_unavailable", 504: "timeout"}
ROLES = ("system", "user", "assistant")


class OpenAIError(HTTPError):
    """A refusal with the parameter it concerns and OpenAI's machine-readable code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
        super().__init__(status, message, headers)
        self.param, self.code = param, code


def error_body(error: HTTPError) -> JSONResponse:
    content = {"error": {"message": error.message, "type": ERROR_TYPES.get(error.status, "invalid_request_error"),
                         "param": getattr(error, "param", None), "code": getattr(error, "code", None)}}
    return JSONResponse(content, status_code=error.status, headers=error.headers)


def openai_errors(handler):
    """Refusals of the shared request path (auth, limits, lookup) rendered in OpenAI's error shape."""

    @functools.wraps(handler)
    async def wrapped(request: Request):
        try:
            return await handler(request)
        except HTTPError as error:
            log_entry(request)["error"] = error.message
            return error_body(error)

    return wrapped


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[dict[str, Any]]
    name: str | None = None

    def text(self) -> str:
        """The content; a list of parts must be text parts (this server has no image or audio input)."""
        if isinstance(self.content, str):
            return self.content
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in self.content):
            raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
        return "".join(part["text"] for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Settings(BaseModel):
    """The sampling fields both routes take; fields this server does not implement are refused at a non-default value."""

    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool | None = None
    ignore_eos: bool = False  # vLLM's and llama.cpp's extension (the openai client's extra_body): up to max_tokens regardless


class ChatRequest(Settings):
    messages: list[Message]


class CompletionRequest(Settings):
    prompt: str | list[str]
    echo: bool = False


UNSUPPORTED = {"frequency_penalty": 0.0, "presence_penalty": 0.0, "logprobs": None, "echo": False}


def parse(model: type[Settings], body: bytes) -> Settings:
    """The request, or a 400 naming the first field that is wrong and what it allows."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise OpenAIError(400, "the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    try:
        request = model.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"])) or None
        message = f"{where}: {first['msg']}" if first["type"] != "extra_forbidden" else f"unknown field {where!r}"
        raise OpenAIError(400, message, param=where) from None
    for name, default in UNSUPPORTED.items():
        if name in request.model_fields_set and getattr(request, name) not in (default, False, None):
            raise OpenAIError(400, f"{name} is not supported by this server (leave it at {default})", param=name)
    if request.n != 1:
        raise OpenAIError(400, f"n must be 1 (one choice per request), got {request.n}", param="n")
    return request


def add_openai_routes(app: FastAPI, state: ServerState) -> None:
    cfg = state.cfg

    def sampling(request: Settings, prompt_tokens: int, window: int) -> Sampling:
        asked = request.max_completion_tokens or request.max_tokens
        if asked is not None and asked > cfg.max_new_tokens_limit:
            raise OpenAIError(400, f"max_tokens {asked} exceeds this server's limit of {cfg.max_new_tokens_limit}", param="max_tokens")
        wanted = asked or cfg.max_new_tokens_limit
        if prompt_tokens + (asked or 1) > window:
            raise OpenAIError(400, f"the prompt has {prompt_tokens} tokens and max_tokens {asked or 1}; this model's context "
                              f"is {window} tokens", param="messages", code="context_length_exceeded")
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise OpenAIError(400, "stop takes up to 4 non-empty strings", param="stop")
        return Sampling(min(wanted, window - prompt_tokens), request.temperature, request.top_p, request.seed, tuple(stop),
                        request.ignore_eos)

    def prompt_of(request: Settings, lm) -> list[int]:
        if isinstance(request, ChatRequest):
            if not request.messages:
                raise OpenAIError(400, "messages is empty; send at least one message", param="messages")
            messages = []
            for i, message in enumerate(request.messages):
                if message.role not in ROLES:
                    raise OpenAIError(400, f"messages[{i}].role {message.role!r} is not one of {', '.join(ROLES)}", param=f"messages.{i}.role")
                try:
                    content = message.text()
                except ValueError as error:
                    raise OpenAIError(400, f"messages[{i}].content: {error}", param=f"messages.{i}.content") from None
                if len(content) > cfg.max_chars:
                    raise OpenAIError(400, f"messages[{i}] has {len(content)} characters; the limit is {cfg.max_chars}", param="messages")
                messages.append({"role": message.role, "content": content})
            return lm.chat_ids(messages)
        prompt = request.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise OpenAIError(400, "prompt takes one string (or a list of one) per request", param="prompt")
            prompt = prompt[0]
        if not prompt.strip():
            raise OpenAIError(400, "prompt is empty", param="prompt")
        if len(prompt) > cfg.max_chars:
            raise OpenAIError(400, f"prompt has {len(prompt)} characters; the limit is {cfg.max_chars}", param="prompt")
        return lm.text_ids(prompt)

    def served_model(name: str):
        if name not in state.language_models:
            chat = [n for n in state.language_models] or ["none"]
            raise OpenAIError(404, f"no language model {name!r}; models with /v1/chat/completions: {', '.join(chat)}",
                              param="model", code="model_not_found")
        if not state.ready:
            raise OpenAIError(503, f"model {name!r} is loading; poll /v2/health/ready", headers={"Retry-After": "1"})
        return state.language_models[name]

    async def complete(request: Request, kind: type[Settings]):
        state.authorize(request, "infer")
        body = await state.read_body(request)
        asked = parse(kind, body)
        served = served_model(asked.model)
        prompt = prompt_of(asked, served.model)
        settings = sampling(asked, len(prompt), served.model.window)
        entry = log_entry(request)
        entry["model"], entry["prompt_tokens"] = asked.model, len(prompt)
        if isinstance(asked, ChatRequest):
            entry["inputs"] = [m.model_dump(exclude_none=True) for m in asked.messages]
        else:
            entry["inputs"] = [asked.prompt]
        sequence = Sequence(prompt, settings, served.model.tokenizer, served.model.end_ids, served.adapter)
        try:
            stream = served.worker.submit(sequence, served.name)
        except QueueFull:
            raise state.reject("queue", 503, f"model {asked.model!r} has {served.worker.queued} requests waiting (limit "
                               f"{cfg.max_queue})", {"Retry-After": "1"}) from None
        state.observe_prompts(asked.model, [sequence])
        chat = isinstance(asked, ChatRequest)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        watcher = asyncio.ensure_future(watch(request, served.worker, stream))
        if asked.stream:
            include_usage = bool(asked.stream_options and asked.stream_options.include_usage)
            return StreamingResponse(events(stream, served.worker, watcher, ident, created, asked.model, chat, include_usage, entry),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            text, finish = await collect(stream, cfg.deadline_ms / 1000, served.worker)
        finally:
            watcher.cancel()
        entry["outputs"], entry["completion_tokens"] = [text], sequence.generated
        usage = {"prompt_tokens": len(prompt), "completion_tokens": sequence.generated,
                 "total_tokens": len(prompt) + sequence.generated}
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
                  if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
        answer = {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                  "model": asked.model, "choices": [choice], "usage": usage, "system_fingerprint": None}
        return Response(json.dumps(answer).encode(), media_type="application/json")

    async def collect(stream, timeout: float, worker) -> tuple[str, str]:
        pieces, deadline = [], time.monotonic() + timeout
        while True:
            try:
                kind, value = await asyncio.wait_for(stream.events.get(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                worker.cancel(stream)
                raise state.reject("deadline", 504, f"no answer within the deadline of {cfg.deadline_ms} ms") from None
            if kind == "text":
                pieces.append(value)
            elif kind == "end":
                return "".join(pieces), value
            elif kind == "gone":
                raise state.reject("disconnected", 499, "client closed the request")
            else:
                raise OpenAIError(503, value, headers={"Retry-After": "1"})

    async def events(stream, worker, watcher, ident, created, model, chat, include_usage, entry):
        """SSE lines as tokens are chosen, then `data: [DONE]`; a client gone mid-stream frees its row at once."""
        kind_name = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, role: bool = False) -> bytes:
            if chat:
                body = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta is not None else {})
                choice = {"index": 0, "delta": body, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            payload = {"id": ident, "object": kind_name, "created": created, "model": model, "choices": [choice],
                       "system_fingerprint": None}
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        pieces = []
        try:
            if chat:
                yield chunk(None, None, role=True)
            while True:
                kind, value = await stream.events.get()
                if kind == "text":
                    pieces.append(value)
                    yield chunk(value, None)
                elif kind == "end":
                    yield chunk(None, value)
                    break
                elif kind == "gone":
                    return
                else:
                    yield b"data: " + json.dumps({"error": {"message": value, "type": "service_unavailable", "param": None,
                                                            "code": None}}).encode() + b"\n\n"
                    break
            tokens = stream.sequence.generated
            if include_usage:
                usage = {"prompt_tokens": len(stream.sequence.prompt), "completion_tokens": tokens,
                         "total_tokens": len(stream.sequence.prompt) + tokens}
                yield b"data: " + json.dumps({"id": ident, "object": kind_name, "created": created, "model": model,
                                              "choices": [], "usage": usage}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            watcher.cancel()
            if not stream.sequence.finished:
                worker.cancel(stream)
            entry["outputs"], entry["completion_tokens"] = ["".join(pieces)], stream.sequence.generated

    async def watch(request: Request, worker, stream) -> None:
        """When the client closes the connection, its row leaves the batch at the next token boundary."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                worker.cancel(stream)
                stream.events.put_nowait(("gone", None))
                return

    @app.post("/v1/chat/completions", summary="OpenAI chat completion (streams with stream: true)")
    @openai_errors
    async def chat_completions(request: Request):
        return await complete(request, ChatRequest)

    @app.post("/v1/completions", summary="OpenAI text completion (streams with stream: true)")
    @openai_errors
    async def completions(request: Request):
        return await complete(request, CompletionRequest)

