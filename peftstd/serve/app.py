"""The HTTP service: our JSON API (/v1), KServe V2 (/v2), health, API keys with scopes, limits, and draining.

Every refusal is a JSON body `{"error": "one line"}` with a 4xx (or 503/504) status: bad input never gets a 500.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from peftstd import __version__
from peftstd.errors import UserError
from peftstd.runtime.drift import DriftWindow, observe
from peftstd.runtime.predictors import Encoded
from peftstd.serve.batcher import DeadlineExceeded, ModelWorker, QueueFull
from peftstd.serve.config import ServeConfig
from peftstd.serve.keys import KeyRing
from peftstd.serve.metrics import Metrics
from peftstd.serve.requestlog import RequestLog, request_id
from peftstd.serve.v2 import HEADER, ProtocolError, Tensor, encode_response, parse_request

INLINE_TOKENIZE_CHARS = 1000  # request bodies up to this size are tokenized on the event loop (see `encode`)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def log_entry(request: Request) -> dict:
    """What the handlers found out about a request, for its request-log line (`Lifecycle` writes it)."""
    return request.scope.setdefault("peftstd.log", {})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def refusal(request: Request, error: HTTPError) -> JSONResponse:
    """The JSON line of a refused request, its message kept for the request log."""
    log_entry(request)["error"] = error.message
    return error_response(error.status, error.message, error.headers)


def bug_response(error: Exception) -> JSONResponse:
    """A fault of ours, not of the request: still one JSON line (and the traceback on the server's stderr)."""
    import traceback

    traceback.print_exception(error)
    return error_response(500, f"internal error ({type(error).__name__}); the server logged it")


class DirectRoute:
    """A FastAPI route that `Lifecycle` answers itself, without FastAPI's router and middleware stack.

    That stack (routing, dependency solving, exit stacks, exception and telemetry middleware) took about 0.1 ms of
    the event loop's 0.4 ms per request at concurrency 32 (a stubbed model, measured with per-thread CPU time), and
    on 2 cores the event loop shares the CPU with the model. The route, its matching and its handler are FastAPI's
    own (so /docs and OpenAPI describe what runs); errors become the same JSON bodies.
    """

    def __init__(self, route: APIRoute):
        self.route, self.path, self.handler = route, route.path, route.endpoint
        [self.method] = route.methods

    def match(self, scope) -> dict[str, str] | None:
        """The path parameters when the route takes the request (path and method), else None."""
        found, child = self.route.matches(scope)
        return child["path_params"] if found is Match.FULL else None

    async def __call__(self, scope, receive, send, params: dict[str, str]) -> None:
        scope["route"], scope["path_params"] = self.route, params  # as the router sets them, for the metrics
        request = Request(scope, receive)
        try:
            response = await self.handler(request=request, **params)
        except HTTPError as error:
            response = refusal(request, error)
        except Exception as error:  # noqa: BLE001 - as FastAPI's on_bug handler: a 500 with one line
            response = bug_response(error)
        await response(scope, receive, send)


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
    direct: list[DirectRoute] = field(default_factory=list)  # set by create_app

    def __post_init__(self):
        self.metrics.in_flight.set_function(lambda: self.inflight)

    def observe(self, model: ModelWorker, items: list[Encoded], results: list[dict]) -> None:
        """Add the answered inputs to the model's drift window (inputs sent as token ids are not observed)."""
        window = self.drift.get(model.name)
        if window is not None:
            window.add([observe(model.predictor, item, result) for item, result in zip(items, results) if not item.raw])

    def reject(self, reason: str, status: int, message: str, headers: dict[str, str] | None = None) -> HTTPError:
        self.metrics.rejections.labels(reason).inc()
        return HTTPError(status, message, headers)

    def idle(self) -> bool:
        return self.inflight == 0 and all(w.idle() for w in self.workers.values())

    @property
    def serving(self) -> bool:
        """Ready: every model loaded and warmed, and not draining."""
        return self.ready and not self.draining


class Lifecycle:
    """Counts requests in flight and, once draining, answers new ones 503 (health probes still answer); every
    answer is counted in the metrics by model, route template and status."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, sent = time.perf_counter(), 500, 0
        rid = request_id(scope["headers"])
        scope["peftstd.log"] = entry = {}  # filled by the handlers (key, model, inputs, outputs, timings, error)

        async def send_recorded(message):
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            if scope["path"].startswith("/v2/health/"):
                await self.app(scope, receive, send_recorded)
            elif self.state.draining:
                response = error_response(503, "the server is shutting down; retry on another replica",
                                          {"Retry-After": "1", "Connection": "close"})
                await response(scope, receive, send_recorded)
            else:
                self.state.inflight += 1
                try:
                    for route in self.state.direct:
                        params = route.match(scope)
                        if params is not None:
                            await route(scope, receive, send_recorded, params)
                            break
                    else:
                        await self.app(scope, receive, send_recorded)
                finally:
                    self.state.inflight -= 1
        finally:
            route = scope.get("route")  # set by the router on the scope it was given
            name = scope.get("path_params", {}).get("name") if route else None
            model = name if name in self.state.exports else ""  # a client's made-up name is no new metric series
            seconds = time.perf_counter() - started
            self.state.metrics.observe_request(model, route.path if route else "unmatched", status, seconds)
            if self.state.log is not None and not scope["path"].startswith("/v2/health/"):
                self.state.log.write({"request_id": rid, "key": entry.pop("key", None), "method": scope["method"],
                                      "route": route.path if route else scope["path"][:200], "model": model or None, "status": status,
                                      "request_bytes": entry.pop("request_bytes", 0), "response_bytes": sent,
                                      "duration_ms": round(seconds * 1000, 3), **entry})


def create_app(state: ServerState) -> FastAPI:
    cfg = state.cfg

    async def lifespan(app: FastAPI):
        loader = asyncio.get_running_loop().create_task(load_models(state))
        yield
        loader.cancel()
        for worker in state.workers.values():
            await worker.stop()
        state.pool.shutdown(wait=False)
        if state.log is not None:
            state.log.close()

    app = FastAPI(title="peftstd serve", version=__version__, lifespan=lifespan,
                  description="Exported peftstd models: /v1 JSON API and KServe V2 (Open Inference Protocol).")

    @app.exception_handler(HTTPError)
    async def on_http_error(request: Request, error: HTTPError):
        return refusal(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def on_starlette_error(request: Request, error: StarletteHTTPException):
        message = {404: f"no route {request.url.path}; see /docs", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(error.status_code, message.get(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, error: Exception):
        return bug_response(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        message = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        log_entry(request)["error"] = message
        return error_response(422, message)

    def authorize(request: Request, scope: str) -> str:
        """The key's name (or the client's address without keys); 401 without a valid key, 403 without the scope."""
        if state.keyring is None:
            who = f"address {request.client.host if request.client else 'unknown'}"
        else:
            header = request.headers.get("authorization", "")
            presented = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
            if not presented:
                raise state.reject("auth", 401, "an API key is required: send 'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"})
            key = state.keyring.find(presented)
            if key is None:
                raise state.reject("auth", 401, "the API key is not valid (unknown or revoked)", {"WWW-Authenticate": "Bearer"})
            if not key.allows(scope):
                raise state.reject("scope", 403, f"key {key.name!r} lacks the {scope!r} scope (it has {', '.join(key.scopes)})")
            who = key.name
            log_entry(request)["key"] = who
        if scope == "infer" and state.limiter:
            wait = state.limiter.retry_after(who)
            if wait:
                raise state.reject("rate", 429, f"rate limit of {cfg.rate_limit:g} requests/s exceeded for {who}",
                                   {"Retry-After": str(math.ceil(wait))})
        return who

    def known(name: str) -> None:
        if name not in state.exports:
            raise HTTPError(404, f"no model {name!r}; models: {', '.join(state.exports)}")

    def worker(name: str) -> ModelWorker:
        known(name)
        if not state.ready:
            raise HTTPError(503, f"model {name!r} is loading; poll /v2/health/ready", {"Retry-After": "1"})
        return state.workers[name]

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            raise state.reject("size", 413, f"request body of {declared} bytes exceeds the limit of {cfg.max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise state.reject("size", 413, f"request body exceeds the limit of {cfg.max_body_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        log_entry(request)["request_bytes"] = len(body)
        return body

    def check_inputs(values: list) -> None:
        if not values:
            raise state.reject("input", 422, "inputs is empty; send at least one input")
        if len(values) > cfg.max_inputs:
            raise state.reject("input", 422, f"{len(values)} inputs exceed the limit of {cfg.max_inputs} per request")
        for i, value in enumerate(values):
            texts = [value] if isinstance(value, str) else [v for v in value.values() if isinstance(v, str)] if isinstance(value, dict) else []
            for text in texts:
                if len(text) > cfg.max_chars:
                    raise state.reject("input", 422, f"inputs[{i}] has {len(text)} characters; the limit is {cfg.max_chars}")

    async def encode(request: Request, model: ModelWorker, make, chars: int) -> list[Encoded]:
        """Tokenize in the pool, off the event loop; a request of a few short texts is tokenized in place, since
        handing it to a thread and back costs more than the 0.1 ms its tokenization takes (measured)."""
        started = time.perf_counter()
        try:
            if chars <= INLINE_TOKENIZE_CHARS:
                return make()
            return await asyncio.get_running_loop().run_in_executor(state.pool, make)
        except UserError as error:  # InputError, or the task's own data checks (a question too long for the window)
            raise state.reject("input", 422, str(error)) from None
        finally:
            seconds = time.perf_counter() - started
            state.metrics.tokenize_seconds.labels(model.name).observe(seconds)
            log_entry(request)["tokenize_ms"] = round(seconds * 1000, 3)

    async def infer(request: Request, model: ModelWorker, items: list[Encoded]) -> list[dict]:
        """Queue the inputs and wait for their results, the deadline, or the client going away."""
        started = time.monotonic()
        deadline = started + cfg.deadline_ms / 1000
        try:
            futures = model.submit(items, deadline)
        except QueueFull:
            raise state.reject("queue", 503, f"model {model.name!r} has {model.queued_rows} rows queued (limit {cfg.max_queue})",
                               {"Retry-After": "1"}) from None
        results = asyncio.gather(*futures)
        gone = asyncio.ensure_future(disconnected(request))
        try:
            done, _ = await asyncio.wait({results, gone}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if results not in done:
            results.cancel()  # the worker drops cancelled inputs before they reach the model
            if gone in done:
                raise state.reject("disconnected", 499, "client closed the request")
            raise state.reject("deadline", 504, f"no answer within the deadline of {cfg.deadline_ms} ms")
        try:
            outputs = results.result()
        except DeadlineExceeded:
            raise state.reject("deadline", 504, f"no answer within the deadline of {cfg.deadline_ms} ms") from None
        entry = log_entry(request)
        entry["wait_ms"], entry["outputs"] = round((time.monotonic() - started) * 1000, 3), outputs
        state.observe(model, items, outputs)
        return outputs

    # ---- our JSON API
    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request, "read")
        return {"models": [describe(name) for name in state.exports]}

    @app.get("/v1/models/{name}")
    async def model_info(name: str, request: Request):
        authorize(request, "read")
        known(name)
        return describe(name)

    def describe(name: str) -> dict:
        if name not in state.workers:
            return {"name": name, "path": str(state.exports[name]), "ready": False}
        w = state.workers[name]
        stats = w.stats
        return {"name": name, "path": str(state.exports[name]), "ready": state.ready, **w.predictor.describe(),
                "queued_rows": w.queued_rows, "batches": stats.batches, "rows": stats.rows, "model_seconds": stats.model_seconds,
                "dropped": {"deadline": stats.dropped_deadline, "disconnected": stats.dropped_disconnected},
                "padding_share": 1 - stats.real_tokens / stats.padded_tokens if stats.padded_tokens else 0.0}

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request):
        authorize(request, "infer")
        model = worker(name)
        body = await read_body(request)
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise state.reject("input", 400, "the request body is not valid JSON; send {\"inputs\": [...]}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise state.reject("input", 422, "the request body must be an object with an 'inputs' list")
        unknown = sorted(set(payload) - {"inputs", "id"})
        if unknown:
            raise state.reject("input", 422, f"unknown field {unknown[0]!r}; allowed: inputs, id")
        values = payload["inputs"]
        check_inputs(values)
        log_entry(request)["inputs"] = values

        def make() -> list[Encoded]:
            items = []
            for i, value in enumerate(values):
                try:
                    items.append(model.predictor.encode(value))
                except UserError as error:
                    raise type(error)(f"inputs[{i}]: {error}") from None
            return items

        items = await encode(request, model, make, len(body))
        outputs = await infer(request, model, items)
        answer = {"model": name, **({"id": payload["id"]} if "id" in payload else {}), "outputs": outputs}
        return Response(json.dumps(answer).encode(), media_type="application/json")  # plain data: no jsonable_encoder pass

    @app.get("/metrics")
    async def metrics(request: Request):
        """Prometheus exposition (text format)."""
        authorize(request, "metrics")
        return Response(state.metrics.exposition(), media_type=state.metrics.content_type)

    # ---- KServe V2
    @app.get("/v2")
    async def server_metadata(request: Request):
        authorize(request, "read")
        return {"name": "peftstd", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        body = {"ready": state.serving, **({"error": state.load_error} if state.load_error else {})}
        return JSONResponse(body, status_code=200 if state.serving else 503)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, request: Request, version: str = "1"):
        authorize(request, "read")
        known(name)
        return JSONResponse({"name": name, "ready": state.serving}, status_code=200 if state.serving else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str = "1"):
        authorize(request, "read")
        model = worker(name)
        return {"name": name, "versions": ["1"], "platform": f"{model.predictor.runtime}_onnx",
                "inputs": v2_inputs(model), "outputs": v2_outputs(model)}

    @app.post("/v2/models/{name}/versions/{version}/infer")
    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request, version: str = "1"):
        authorize(request, "infer")
        model = worker(name)
        body = await read_body(request)
        try:
            payload, tensors = parse_request(body, request.headers.get(HEADER))
            make, raw, values = v2_items(model, {t.name: t for t in tensors})
            log_entry(request)["inputs"] = values
        except ProtocolError as error:
            raise state.reject("input", 400, str(error)) from None
        items = await encode(request, model, make, len(body))
        results = await infer(request, model, items)
        try:
            content, headers = encode_response(name, payload, v2_tensors(model, results, raw))
        except ProtocolError as error:
            raise state.reject("input", 400, str(error)) from None
        return Response(content, headers=headers)

    state.direct = [DirectRoute(route) for route in app.routes if isinstance(route, APIRoute) and route.endpoint in (predict, v2_infer)]
    return app


async def disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so only that can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def load_models(state: ServerState) -> None:
    """Load and warm every model in a thread; the server is live meanwhile, and ready only afterwards."""
    loop = asyncio.get_running_loop()
    try:
        for name, path in state.exports.items():
            predictor = await loop.run_in_executor(None, state.load, name, path)
            worker = ModelWorker(name, predictor, state.cfg.max_batch_size, state.cfg.max_batch_tokens, state.cfg.max_queue,
                                 state.cfg.max_wait_ms, state.cfg.max_padding)
            await loop.run_in_executor(None, warm_up, predictor, state.cfg)
            reference = predictor.export.monitor
            if reference is not None:
                state.drift[name] = DriftWindow(reference, state.cfg.drift_window, state.cfg.drift_window_s)
            else:
                print(f"peftstd serve: {name}: no monitor.json in {path} (exported before peftstd wrote one); "
                      "no drift metrics for it (re-export to get them)", flush=True)
            state.metrics.add_model(name, worker, state.drift.get(name))
            worker.start()
            state.workers[name] = worker
        # Everything loaded so far lives as long as the server: frozen, the garbage collector no longer scans it.
        # Unfrozen, each full collection walked the ~450k objects of the libraries and models, 0.24 s with the event
        # loop stopped, twice in 15 s at concurrency 32 (measured with gc.callbacks).
        gc.collect()
        gc.freeze()
        state.ready = True
        print(f"peftstd serve: ready ({', '.join(state.exports)})", flush=True)
    except Exception as error:  # noqa: BLE001 - reported by readiness and on stderr; liveness stays up
        state.load_error = f"{type(error).__name__}: {error}"
        print(f"peftstd serve: error: loading failed: {state.load_error}", flush=True)


def warm_up(predictor, cfg: ServeConfig) -> None:
    """One call per length bucket at 1 row and at a full batch, before the server is ready, so the first real
    requests pay no first-call costs (allocator growth, kernels built per shape). Buckets: powers of two up to the
    model's length, or every length a batch can take when the predictor pads to a `length_step` (OpenVINO)."""
    if predictor.generative:
        predictor.run([predictor.encode({"prompt": "hello", "max_new_tokens": 2})])
        return
    vocabulary_id = predictor.tokenizer.convert_tokens_to_ids(predictor.tokenizer.unk_token or "") or 1
    step, longest = predictor.length_step, predictor.max_length
    sizes = range(step, longest + step, step) if step > 1 else [8 << i for i in range(longest.bit_length())]
    for length in sorted({predictor.padded_length(n) for n in sizes}):
        rows = max(1, min(cfg.max_batch_size, cfg.max_batch_tokens // length))
        row = predictor.encode_ids([vocabulary_id] * length).rows[0]
        for count in sorted({1, rows}):
            predictor.forward([row] * count)


# ---- V2 tensors per task

def v2_inputs(model: ModelWorker) -> list[dict]:
    task = model.predictor.task
    if model.predictor.generative:
        return [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    text = ([{"name": "question", "datatype": "BYTES", "shape": [-1]}, {"name": "context", "datatype": "BYTES", "shape": [-1]}]
            if task == "question-answering" else [{"name": "text", "datatype": "BYTES", "shape": [-1]}])
    ids = [{"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in sorted(model.predictor.engine.input_names)]
    return text + ids


def v2_outputs(model: ModelWorker) -> list[dict]:
    task = model.predictor.task
    if model.predictor.generative:
        return [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]
    if task == "text-classification":
        return [{"name": "label", "datatype": "BYTES", "shape": [-1]}, {"name": "score", "datatype": "FP32", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.predictor.labels)]}]
    if task == "token-classification":
        return [{"name": "entities", "datatype": "BYTES", "shape": [-1]}]
    return [{"name": "answer", "datatype": "BYTES", "shape": [-1]}, {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "start", "datatype": "INT64", "shape": [-1]}, {"name": "end", "datatype": "INT64", "shape": [-1]}]


def texts(tensors: dict[str, Tensor], name: str) -> list[str]:
    tensor = tensors.get(name)
    if tensor is None:
        raise ProtocolError(f"missing input {name!r}")
    if tensor.datatype != "BYTES" or len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise ProtocolError(f"input {name!r} must be BYTES of shape [batch] or [batch, 1], got {tensor.datatype} {tensor.shape}")
    try:
        return [v.decode("utf-8") for v in tensor.data]
    except UnicodeDecodeError:
        raise ProtocolError(f"input {name!r} holds bytes that are not UTF-8") from None


def v2_items(model: ModelWorker, tensors: dict[str, Tensor]):
    """(a callable that encodes the request's inputs, whether they are token ids, the inputs as /v1 takes them or
    None for token ids); ProtocolError when malformed."""
    predictor = model.predictor
    if "input_ids" in tensors:
        names = set(predictor.engine.input_names) if not predictor.generative else {"input_ids"}
        unknown = sorted(set(tensors) - names)
        if unknown:
            raise ProtocolError(f"unknown input {unknown[0]!r}; token inputs: {', '.join(sorted(names))}")
        ids = tensors["input_ids"]
        if ids.datatype not in ("INT64", "INT32") or len(ids.shape) != 2:
            raise ProtocolError(f"input_ids must be INT64 of shape [batch, sequence], got {ids.datatype} {ids.shape}")
        if not ids.shape[0]:
            raise ProtocolError("the request holds no inputs (input_ids has 0 rows)")
        for other in tensors.values():
            if other.shape != ids.shape or other.datatype not in ("INT64", "INT32"):
                raise ProtocolError(f"input {other.name!r} must be INT64 of input_ids' shape {ids.shape}")

        def make_ids():
            columns = {k: np.asarray(t.data).astype(np.int64).tolist() for k, t in tensors.items()}
            return [predictor.encode_ids(columns["input_ids"][i], columns.get("attention_mask", [None] * len(columns["input_ids"]))[i],
                                         columns["token_type_ids"][i] if "token_type_ids" in columns else None)
                    for i in range(len(columns["input_ids"]))]

        return make_ids, True, None
    if predictor.task == "question-answering":
        questions, contexts = texts(tensors, "question"), texts(tensors, "context")
        if len(questions) != len(contexts):
            raise ProtocolError(f"question has {len(questions)} elements and context {len(contexts)}; they must match")
        values = [{"question": q, "context": c} for q, c in zip(questions, contexts)]
    else:
        values = texts(tensors, "text")
    unknown = sorted(set(tensors) - {"text", "question", "context"})
    if unknown:
        raise ProtocolError(f"unknown input {unknown[0]!r}; see GET /v2/models/{model.name}")
    if not values:
        raise ProtocolError("the request holds no inputs")
    return (lambda: [predictor.encode(v) for v in values]), False, values


def v2_tensors(model: ModelWorker, results: list[dict], raw: bool) -> list[Tensor]:
    task, n = model.predictor.task, len(results)
    if raw:
        logits = np.stack([r["logits"][0] for r in results]).astype(np.float32)
        if task == "question-answering":
            return [Tensor("start_logits", "FP32", list(logits.shape[:-1]), logits[..., 0]),
                    Tensor("end_logits", "FP32", list(logits.shape[:-1]), logits[..., 1])]
        return [Tensor("logits", "FP32", list(logits.shape), logits)]
    if model.predictor.generative:
        return [Tensor("text_output", "BYTES", [n], [r["text"].encode() for r in results])]
    if task == "text-classification":
        labels = model.predictor.labels
        probabilities = np.array([[r["probabilities"][label] for label in labels] for r in results], dtype=np.float32)
        return [Tensor("label", "BYTES", [n], [r["label"].encode() for r in results]),
                Tensor("score", "FP32", [n], np.array([r["score"] for r in results], dtype=np.float32)),
                Tensor("probabilities", "FP32", [n, len(labels)], probabilities)]
    if task == "token-classification":
        return [Tensor("entities", "BYTES", [n], [json.dumps(r["entities"]).encode() for r in results])]
    return [Tensor("answer", "BYTES", [n], [r["answer"].encode() for r in results]),
            Tensor("score", "FP32", [n], np.array([r["score"] for r in results], dtype=np.float32)),
            Tensor("start", "INT64", [n], np.array([-1 if r["start"] is None else r["start"] for r in results], dtype=np.int64)),
            Tensor("end", "INT64", [n], np.array([-1 if r["end"] is None else r["end"] for r in results], dtype=np.int64))]
