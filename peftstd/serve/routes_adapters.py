"""Admin routes that add and remove LoRA adapters of a served base while it serves: POST /v1/adapters
{"name", "path"} and DELETE /v1/adapters/{name} (scope `admin`).

The change runs in the generation worker's thread between two decode steps, so no forward sees a half-loaded
adapter. A removed name is refused (404) from the moment the DELETE arrives; its weights go once the requests
already running on it have finished, so none of them fails.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request

from peftstd.errors import UserError
from peftstd.serve.generation import ServedLanguageModel
from peftstd.serve.state import HTTPError, ServerState


def add_adapter_routes(app: FastAPI, state: ServerState) -> None:
    def adapter_workers() -> list[ServedLanguageModel]:
        return [m for m in state.language_models.values() if m.adapter is not None]

    def one_process() -> None:
        if state.replica is not None:
            raise state.reject("input", 409, "on Ray Serve a change of adapters would reach one replica only; deploy the "
                               "runs as models instead (`peftstd serve --engine ray --ray-address ...`: a rolling update)")

    @app.post("/v1/adapters", summary="load a LoRA run as a new model name on the served base (scope admin)")
    async def load_adapter(request: Request):
        from peftstd.runtime.folders import RunFolder
        from peftstd.runtime.load import adapter_of

        state.authorize(request, "admin")
        one_process()
        body = await state.read_body(request)
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise state.reject("input", 400, 'the request body is not valid JSON; send {"name": ..., "path": RUN}') from None
        if not isinstance(payload, dict) or set(payload) != {"name", "path"} or not all(isinstance(v, str) for v in payload.values()):
            raise state.reject("input", 422, "send an object with string fields name and path (a causal-LM LoRA run) and nothing else")
        name, path = payload["name"], Path(payload["path"])
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise state.reject("input", 422, f"model name {name!r} must be letters, digits, '-', '_' or '.'")
        if name in state.exports:
            raise state.reject("input", 409, f"a model named {name!r} is served already; remove it first or pick another name")
        served = adapter_workers()
        if not state.ready or not served:
            raise state.reject("input", 409, "no adapter base is served: start `peftstd serve` with at least one LoRA run")
        try:
            run = RunFolder(path)
            folder = adapter_of(run, "causal-lm")
        except UserError as error:
            raise state.reject("input", 422, str(error)) from None
        decoder = served[0].worker.decoder
        if Path(run.manifest.base_model.path) != Path(decoder.base):
            raise state.reject("input", 422, f"{str(path)!r} adapts {run.manifest.base_model.path}; the served base is {decoder.base}")
        try:
            await served[0].worker.call(lambda: decoder.load_adapter(name, folder))
        except Exception as error:  # noqa: BLE001 - an unreadable adapter folder is the caller's to fix
            raise state.reject("input", 422, f"adapter {str(folder)!r} did not load: {type(error).__name__}: {error}") from None
        model = ServedLanguageModel(name, served[0].worker, served[0].model, name, str(path))
        state.language_models[name] = model
        state.exports[name] = path
        state.metrics.add_language_model(model)
        return {"loaded": name, "path": str(path), "adapters": sorted(m.name for m in adapter_workers())}

    @app.delete("/v1/adapters/{name}", summary="remove a loaded adapter once its running requests finish (scope admin)")
    async def unload_adapter(name: str, request: Request):
        state.authorize(request, "admin")
        one_process()
        model = state.language_models.get(name)
        if model is None or model.adapter is None:
            raise HTTPError(404, f"no adapter {name!r}; adapters: {', '.join(m.name for m in adapter_workers()) or 'none'}")
        del state.language_models[name]
        del state.exports[name]
        await model.worker.call(lambda: model.worker.decoder.unload_adapter(name), adapter=name)
        return {"unloaded": name, "adapters": sorted(m.name for m in adapter_workers())}
