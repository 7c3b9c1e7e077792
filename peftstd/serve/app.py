"""The HTTP service: the FastAPI app with every protocol's routes (our JSON API in `routes_v1`, KServe V2 in
`routes_v2`, OpenAI's in `routes_openai`, adapter admin in `routes_adapters`), the lifecycle middleware (requests in
flight, draining, metrics and the request log for every answer) and the error handlers.

Every refusal is a JSON body `{"error": "one line"}` (OpenAI's error object on the OpenAI routes) with a 4xx (or
503/504) status: bad input never gets a 500. A new protocol is one `routes_*.py` module over `state.ServerState`'s
request path and `inference`'s shared steps, added in `create_app`.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from peftstd import __version__
from peftstd.serve.loading import load_models
from peftstd.serve.requestlog import request_id
from peftstd.serve.routes_adapters import add_adapter_routes
from peftstd.serve.routes_openai import add_openai_routes
from peftstd.serve.routes_v1 import add_v1_routes
from peftstd.serve.routes_v2 import add_v2_routes
from peftstd.serve.state import HTTPError, RateLimiter, ServerState, log_entry

__all__ = ["Lifecycle", "RateLimiter", "ServerState", "create_app"]

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


class Lifecycle:
    """Counts requests in flight and, once draining, answers new ones 503 (health probes still answer); every
    answer is counted in the metrics by model, route template and status."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    def identity(self, rid: str) -> list[tuple[bytes, bytes]]:
        """The request id header (Ray's proxy sends its own, the same id), and which Ray replica answered."""
        if self.state.replica is None:
            return [(b"x-request-id", rid.encode())]
        return [(b"x-peftstd-replica", self.state.replica.encode())]

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
                message["headers"] = [*message.get("headers", []), *self.identity(rid)]
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
    async def lifespan(app: FastAPI):
        # A Ray replica loads its models before it takes traffic; `peftstd serve` loads them while live.
        loader = None if state.ready else asyncio.get_running_loop().create_task(load_models(state))
        yield
        if loader is not None:
            loader.cancel()
        for worker in [*state.workers.values(), *state.generation_workers()]:
            await worker.stop()
        state.pool.shutdown(wait=False)
        if state.log is not None:
            state.log.close()

    app = FastAPI(title="peftstd serve", version=__version__, lifespan=lifespan,
                  description="Exported peftstd models: /v1 JSON API, KServe V2 (Open Inference Protocol) and "
                              "OpenAI-compatible chat and text completions for causal LMs.")

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

    @app.get("/metrics")
    async def metrics(request: Request):
        """Prometheus exposition (text format)."""
        state.authorize(request, "metrics")
        return Response(state.metrics.exposition(), media_type=state.metrics.content_type)

    direct = add_v1_routes(app, state) + add_v2_routes(app, state)
    add_openai_routes(app, state)
    add_adapter_routes(app, state)
    state.direct = [DirectRoute(route) for route in app.routes if isinstance(route, APIRoute) and route.endpoint in direct]
    return app
