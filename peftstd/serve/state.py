"""The server's shared state and the request path every protocol's routes go through: API keys and scopes, rate
limits, the body size limit, model lookup, and refusals as `HTTPError` (each protocol module renders them in its
own error shape)."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from peftstd.runtime.drift import DriftWindow, Observation, observe
from peftstd.runtime.predictors import Encoded
from peftstd.serve.batcher import ModelWorker
from peftstd.serve.config import ServeConfig
from peftstd.serve.generation import ServedLanguageModel
from peftstd.serve.keys import KeyRing
from peftstd.serve.metrics import Metrics
from peftstd.serve.requestlog import RequestLog


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def log_entry(request: Request) -> dict:
    """What the handlers found out about a request, for its request-log line (`Lifecycle` writes it)."""
    return request.scope.setdefault("peftstd.log", {})



class RateLimiter:
    """A token bucket per key: `rate` requests per second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}

    def retry_after(self, who: str) -> float:
        """0 when `who` may go now (and a token is taken), else the seconds until it may."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        tokens, last = self.buckets.get(who, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self.buckets[who] = (tokens - 1, now)
            return 0.0
        self.buckets[who] = (tokens, now)
        return (1 - tokens) / self.rate


@dataclass
class ServerState:
    cfg: ServeConfig
    exports: dict[str, Any]  # name -> export folder path
    load: Any  # callable(name, path) -> Predictor, run in a thread at start-up
    workers: dict[str, ModelWorker] = field(default_factory=dict)
    keyring: KeyRing | None = None
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    inflight: int = 0
    limiter: RateLimiter | None = None
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="tokenize"))
    metrics: Metrics = field(default_factory=Metrics)
    drift: dict[str, DriftWindow] = field(default_factory=dict)
    log: RequestLog | None = None
    direct: list = field(default_factory=list)  # app.DirectRoute, set by create_app
    started: float = field(default_factory=time.time)
    language_models: dict[str, ServedLanguageModel] = field(default_factory=dict)  # causal LMs, batched token by token
    replica: str | None = None  # the Ray Serve replica's id, sent as x-peftstd-replica; None under `peftstd serve`

    def __post_init__(self):
        self.metrics.in_flight.set_function(lambda: self.inflight)

    def observe(self, model: ModelWorker, items: list[Encoded], results: list[dict]) -> None:
        """Add the answered inputs to the model's drift window (inputs sent as token ids are not observed)."""
        window = self.drift.get(model.name)
        if window is not None:
            window.add([observe(model.predictor, item, result) for item, result in zip(items, results) if not item.raw])

    def observe_prompts(self, name: str, sequences: list) -> None:
        """Add a causal LM's prompts to its drift window (their length and unknown tokens, as the export's reference)."""
        window = self.drift.get(name)
        if window is not None and sequences:
            unk = sequences[0].tokenizer.unk_token_id
            window.add([Observation((), None, len(s.prompt), False, s.prompt.count(unk) if unk is not None else 0) for s in sequences])

    def reject(self, reason: str, status: int, message: str, headers: dict[str, str] | None = None) -> HTTPError:
        self.metrics.rejections.labels(reason).inc()
        return HTTPError(status, message, headers)

    def idle(self) -> bool:
        return (self.inflight == 0 and all(w.idle() for w in self.workers.values())
                and all(w.idle() for w in self.generation_workers()))

    def generation_workers(self) -> list:
        """Each causal LM's generation worker once (the adapters of one base share theirs)."""
        return list({id(m.worker): m.worker for m in self.language_models.values()}.values())

    @property
    def serving(self) -> bool:
        """Ready: every model loaded and warmed, and not draining."""
        return self.ready and not self.draining

    def authorize(self, request: Request, scope: str) -> str:
        """The key's name (or the client's address without keys); 401 without a valid key, 403 without the scope."""
        if self.keyring is None:
            who = f"address {request.client.host if request.client else 'unknown'}"
        else:
            header = request.headers.get("authorization", "")
            presented = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
            if not presented:
                raise self.reject("auth", 401, "an API key is required: send 'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"})
            key = self.keyring.find(presented)
            if key is None:
                raise self.reject("auth", 401, "the API key is not valid (unknown or revoked)", {"WWW-Authenticate": "Bearer"})
            if not key.allows(scope):
                raise self.reject("scope", 403, f"key {key.name!r} lacks the {scope!r} scope (it has {', '.join(key.scopes)})")
            who = key.name
            log_entry(request)["key"] = who
        if scope == "infer" and self.limiter:
            wait = self.limiter.retry_after(who)
            if wait:
                raise self.reject("rate", 429, f"rate limit of {self.cfg.rate_limit:g} requests/s exceeded for {who}",
                                   {"Retry-After": str(math.ceil(wait))})
        return who

    def known(self, name: str) -> None:
        if name not in self.exports:
            raise HTTPError(404, f"no model {name!r}; models: {', '.join(self.exports)}")

    def worker(self, name: str) -> ModelWorker:
        self.known(name)
        if not self.ready:
            raise HTTPError(503, f"model {name!r} is loading; poll /v2/health/ready", {"Retry-After": "1"})
        return self.workers[name]

    async def read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.cfg.max_body_bytes:
            raise self.reject("size", 413, f"request body of {declared} bytes exceeds the limit of {self.cfg.max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.cfg.max_body_bytes:
                raise self.reject("size", 413, f"request body exceeds the limit of {self.cfg.max_body_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        log_entry(request)["request_bytes"] = len(body)
        return body
