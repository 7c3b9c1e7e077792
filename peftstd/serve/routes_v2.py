"""KServe V2 (Open Inference Protocol) routes: server metadata, health, model metadata and readiness, and infer
(JSON or binary tensors, see `v2.py`), with each task's inputs and outputs as named tensors."""

from __future__ import annotations

import json

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from peftstd import __version__
from peftstd.serve.batcher import ModelWorker
from peftstd.serve.inference import check_inputs, encode, generate, infer
from peftstd.serve.state import ServerState, log_entry
from peftstd.serve.v2 import HEADER, ProtocolError, Tensor, encode_response, parse_request


def add_v2_routes(app: FastAPI, state: ServerState) -> list:
    """The routes; returns the endpoints `Lifecycle` answers directly."""
    @app.get("/v2")
    async def server_metadata(request: Request):
        state.authorize(request, "read")
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
        state.authorize(request, "read")
        state.known(name)
        return JSONResponse({"name": name, "ready": state.serving}, status_code=200 if state.serving else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str = "1"):
        state.authorize(request, "read")
        if name in state.language_models:
            state.known(name)
            info = state.language_models[name].describe()
            return {"name": name, "versions": ["1"], "platform": platform(info["runtime"]),
                    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]}
        model = state.worker(name)
        return {"name": name, "versions": ["1"], "platform": platform(model.predictor.runtime),
                "inputs": v2_inputs(model), "outputs": v2_outputs(model)}

    @app.post("/v2/models/{name}/versions/{version}/infer")
    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request, version: str = "1"):
        state.authorize(request, "infer")
        if name in state.language_models and state.ready:
            body = await state.read_body(request)
            try:
                payload, tensors = parse_request(body, request.headers.get(HEADER))
                by_name = {t.name: t for t in tensors}
                if set(by_name) != {"text"}:
                    raise ProtocolError(f"a causal LM takes one BYTES input 'text'; got {', '.join(sorted(by_name)) or 'none'}")
                prompts = texts(by_name, "text")
                if not prompts:
                    raise ProtocolError("the request holds no inputs")
            except ProtocolError as error:
                raise state.reject("input", 400, str(error)) from None
            check_inputs(state, prompts)
            results = await generate(state, request, name, prompts)
            content, headers = encode_response(name, payload, [Tensor("text_output", "BYTES", [len(results)],
                                                                      [r["text"].encode() for r in results])])
            return Response(content, headers=headers)
        model = state.worker(name)
        body = await state.read_body(request)
        try:
            payload, tensors = parse_request(body, request.headers.get(HEADER))
            make, raw, values = v2_items(model, {t.name: t for t in tensors})
            log_entry(request)["inputs"] = values
        except ProtocolError as error:
            raise state.reject("input", 400, str(error)) from None
        items = await encode(state, request, model, make, len(body))
        results = await infer(state, request, model, items)
        try:
            content, headers = encode_response(name, payload, v2_tensors(model, results, raw))
        except ProtocolError as error:
            raise state.reject("input", 400, str(error)) from None
        return Response(content, headers=headers)

    return [v2_infer]


# ---- V2 tensors per task

def platform(runtime: str) -> str:
    """V2 metadata's platform: the runtime and what it runs (ONNX files, or a PyTorch model with peft adapters)."""
    return f"{runtime}_{'peft' if runtime == 'pytorch' else 'onnx'}"


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
