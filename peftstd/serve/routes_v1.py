"""Our JSON API: GET /v1/models (in OpenAI's list shape, each entry with our description of the model), GET
/v1/models/{name}, and POST /v1/models/{name}/predict for every task (a causal LM's prompts go through its
continuous batch)."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import Response

from peftstd.errors import UserError
from peftstd.runtime.predictors import Encoded
from peftstd.serve.inference import check_inputs, encode, generate, infer
from peftstd.serve.state import ServerState, log_entry


def add_v1_routes(app: FastAPI, state: ServerState) -> list:
    """The routes; returns the endpoints `Lifecycle` answers directly."""
    @app.get("/v1/models")
    async def list_models(request: Request):
        """OpenAI's model list (what the `openai` client's `models.list()` reads), each entry with our description
        of the model beside OpenAI's four fields."""
        state.authorize(request, "read")
        return {"object": "list", "data": [openai_entry(name) for name in state.exports]}

    def openai_entry(name: str) -> dict:
        return {"id": name, "object": "model", "created": created_at(name), "owned_by": "peftstd", **describe(name)}

    def created_at(name: str) -> int:
        import datetime

        stamp = describe(name).get("exported")
        try:
            return int(datetime.datetime.fromisoformat(stamp).timestamp()) if stamp else int(state.started)
        except ValueError:
            return int(state.started)

    @app.get("/v1/models/{name}")
    async def model_info(name: str, request: Request):
        state.authorize(request, "read")
        state.known(name)
        return describe(name)

    def describe(name: str) -> dict:
        if name in state.language_models:
            return {"name": name, "path": str(state.exports[name]), "ready": state.ready, **state.language_models[name].describe()}
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
        state.authorize(request, "infer")
        if name in state.language_models and state.ready:
            return await generate_predict(name, request)
        model = state.worker(name)
        body = await state.read_body(request)
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
        check_inputs(state, values)
        log_entry(request)["inputs"] = values

        def make() -> list[Encoded]:
            items = []
            for i, value in enumerate(values):
                try:
                    items.append(model.predictor.encode(value))
                except UserError as error:
                    raise type(error)(f"inputs[{i}]: {error}") from None
            return items

        items = await encode(state, request, model, make, len(body))
        outputs = await infer(state, request, model, items)
        answer = {"model": name, **({"id": payload["id"]} if "id" in payload else {}), "outputs": outputs}
        return Response(json.dumps(answer).encode(), media_type="application/json")  # plain data: no jsonable_encoder pass

    async def generate_predict(name: str, request: Request):
        """Our /v1 predict route for a causal LM: each input a prompt (or {"prompt", "max_new_tokens"}), decoded
        greedily through the chat template, in the same continuous batch as the OpenAI routes."""
        body = await state.read_body(request)
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise state.reject("input", 400, "the request body is not valid JSON; send {\"inputs\": [...]}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise state.reject("input", 422, "the request body must be an object with an 'inputs' list")
        unknown = sorted(set(payload) - {"inputs", "id"})
        if unknown:
            raise state.reject("input", 422, f"unknown field {unknown[0]!r}; allowed: inputs, id")
        check_inputs(state, payload["inputs"])
        log_entry(request)["inputs"] = payload["inputs"]
        outputs = await generate(state, request, name, payload["inputs"])
        answer = {"model": name, **({"id": payload["id"]} if "id" in payload else {}), "outputs": outputs}
        return Response(json.dumps(answer).encode(), media_type="application/json")

    return [predict]
