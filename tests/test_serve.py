"""`peftstd serve` against real server processes on 127.0.0.1: every task, batching, the V2 protocol (JSON and
binary, with a client written from the protocol's text), keys and scopes, limits, graceful shutdown, and a fuzzer.
Every request loop is bounded in count and time."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import RECIPE_ENV, REPO, Server, peftstd

TEXTS = ["the movie was great and fun", "a dull and tedious plot", "brilliant", "the acting was really very clumsy and the story was bland",
         "quite a charming story", "painful", "the film was superb and moving and the plot was delightful", "boring"]


def predict(server: Server, model: str, inputs, headers=None, timeout: float = 60, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{model}/predict", json={"inputs": inputs}, headers=headers, timeout=timeout, **kwargs)


def test_classification_is_served_like_predict_and_listed(exported, start):
    from peftstd.runtime.choice import load_predictor
    from peftstd.runtime.folders import ExportFolder

    server = start(f"sentiment={exported}")
    response = predict(server, "sentiment", TEXTS)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    expected = load_predictor(exported).predict(TEXTS)  # auto: the artifact and runtime measured fastest at export, as the server chose
    assert [o["label"] for o in outputs] == [e["label"] for e in expected]
    assert max(abs(o["probabilities"][k] - e["probabilities"][k]) for o, e in zip(outputs, expected) for k in o["probabilities"]) < 1e-4
    listing = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert listing["name"] == "sentiment" and listing["task"] == "text-classification" and listing["labels"] == ["negative", "positive"]
    fastest = ExportFolder(exported).record.choice.timings[0]
    assert (listing["artifact"], listing["runtime"]) == (fastest.artifact, fastest.runtime) and listing["gate"]["passed"] and listing["exported"]
    assert listing["rows_share_calls"] is (fastest.artifact != "int8-dynamic")  # dynamic int8 scales activations over the whole call
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_inference_routes_skip_the_router_but_run_the_documented_handlers():
    """Lifecycle answers the inference routes itself (FastAPI's stack cost a quarter of the event loop's time per
    request); each must be a FastAPI route too, with the same handler, so /docs describes what runs."""
    from peftstd.serve.app import ServerState, create_app
    from peftstd.serve.config import ServeConfig

    state = ServerState(ServeConfig(), {}, None)
    routes = {route.path: route for route in create_app(state).routes}
    assert {route.path for route in state.direct} == {"/v1/models/{name}/predict", "/v2/models/{name}/infer",
                                                      "/v2/models/{name}/versions/{version}/infer"}
    for direct in state.direct:
        assert direct.method in routes[direct.path].methods and routes[direct.path].endpoint is direct.handler
    predict_route, infer_route, versioned = state.direct
    assert predict_route.match({"type": "http", "method": "POST", "path": "/v1/models/sentiment.v2/predict"}) == {"name": "sentiment.v2"}
    assert predict_route.match({"type": "http", "method": "GET", "path": "/v1/models/m/predict"}) is None  # FastAPI answers the 405
    assert predict_route.match({"type": "http", "method": "POST", "path": "/v1/models/a/b/predict"}) is None
    assert infer_route.match({"type": "http", "method": "POST", "path": "/v2/models/m/versions/1/infer"}) is None
    assert versioned.match({"type": "http", "method": "POST", "path": "/v2/models/m/versions/1/infer"}) == {"name": "m", "version": "1"}


@pytest.mark.parametrize("artifact", ["fp32", "int8-dynamic", "int8-static"])
def test_batched_results_equal_single_results(exported, artifact):
    """Each text alone, then inside a batch of mixed lengths, as the batcher forms them: same probabilities within
    the gate's parity tolerance, same labels. Dynamic int8 gets there by running its rows one at a time."""
    from peftstd.runtime.choice import load_predictor

    predictor = load_predictor(exported, artifact)
    texts = TEXTS * 4
    alone = [predictor.run([predictor.encode(t)])[0] for t in texts]
    together = predictor.run([predictor.encode(t) for t in texts])
    assert [a["label"] for a in alone] == [b["label"] for b in together]
    difference = max(abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in zip(alone, together) for k in a["probabilities"])
    assert difference < 1e-4, difference


def test_concurrent_requests_are_batched_and_answered_like_single_ones(exported, start):
    server = start(f"sentiment={exported}", "--max-wait-ms", "20")
    single = {t: predict(server, "sentiment", [t]).json()["outputs"][0] for t in TEXTS}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: (t, predict(server, "sentiment", [t])), TEXTS * 6))
    for text, response in answers:
        assert response.status_code == 200
        got = response.json()["outputs"][0]
        assert got["label"] == single[text]["label"] and abs(got["score"] - single[text]["score"]) < 1e-4
    model = httpx.get(f"{server.url}/v1/models/sentiment").json()
    assert model["rows"] == len(TEXTS) * 7 and model["batches"] < len(TEXTS) * 7  # several requests shared batches


def test_keys_scopes_and_revocation(exported, start, tmp_path):
    keys = tmp_path / "keys.yaml"
    infer = peftstd("serve", "keys", "add", "app", "--scopes", "infer", "--keys", str(keys)).stdout.strip()
    reader = peftstd("serve", "keys", "add", "dash", "--scopes", "read", "--keys", str(keys)).stdout.strip()
    assert infer.startswith("pst_") and infer not in keys.read_text() and "sha256" in keys.read_text()
    server = start(f"m={exported}", "--keys", str(keys))
    assert predict(server, "m", ["great"]).status_code == 401
    assert predict(server, "m", ["great"], headers={"Authorization": "Bearer pst_wrong"}).status_code == 401
    forbidden = predict(server, "m", ["great"], headers={"Authorization": f"Bearer {reader}"})
    assert forbidden.status_code == 403 and "infer" in forbidden.json()["error"]
    assert predict(server, "m", ["great"], headers={"Authorization": f"Bearer {infer}"}).status_code == 200
    assert predict(server, "m", ["great"], headers={"X-API-Key": infer}).status_code == 200
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {infer}"}).status_code == 403
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # probes need no key
    listed = peftstd("serve", "keys", "list", "--keys", str(keys)).stdout
    assert "app\tinfer" in listed and infer not in listed
    assert peftstd("serve", "keys", "revoke", "app", "--keys", str(keys)).returncode == 0
    time.sleep(0.05)
    assert predict(server, "m", ["great"], headers={"Authorization": f"Bearer {infer}"}).status_code == 401


def test_limits_answer_with_clear_4xx(exported, start):
    server = start(f"m={exported}", "--max-body-bytes", "2000", "--max-inputs", "4", "--max-chars", "50",
                   "--rate-limit", "1", "--rate-burst", "6")
    too_big = predict(server, "m", ["great " * 400])
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    too_many = predict(server, "m", ["great"] * 5)
    assert too_many.status_code == 422 and "4" in too_many.json()["error"]
    too_long = predict(server, "m", ["great " * 10])
    assert too_long.status_code == 422 and "characters" in too_long.json()["error"]
    statuses = [predict(server, "m", ["great"]).status_code for _ in range(8)]
    assert 429 in statuses
    limited = predict(server, "m", ["great"])
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_full_queue_gives_503_and_deadline_gives_504(exported, start):
    server = start(f"m={exported}", "--max-queue", "2", "--max-batch-size", "1")
    long_text = " ".join(["the movie was really very quite great"] * 4)
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(lambda _: predict(server, "m", [long_text] * 2).status_code, range(48)))
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
    late = start(f"m={exported}", "--deadline-ms", "1")
    response = predict(late, "m", [long_text] * 8)
    assert response.status_code == 504 and "deadline" in response.json()["error"]


def test_inputs_of_clients_that_went_away_never_reach_the_model(exported, start):
    server = start(f"m={exported}", "--max-batch-size", "1", "--streams", "1", "--max-queue", "2048")
    long_text = " ".join(["the movie was really very quite great"] * 4)

    def impatient(_):  # 64 inputs run as 64 model calls: the queue behind the first requests outlasts the timeout
        try:
            return predict(server, "m", [long_text] * 64, timeout=0.05).status_code
        except httpx.TimeoutException:
            return "gone"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(impatient, range(16)))
    assert "gone" in outcomes
    deadline = time.monotonic() + 30
    while (info := httpx.get(f"{server.url}/v1/models/m", timeout=5).json())["queued_rows"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert info["dropped"]["disconnected"] > 0 and info["rows"] + info["dropped"]["disconnected"] <= 16 * 64
    assert predict(server, "m", ["great"]).status_code == 200  # and the server goes on


def test_metrics_count_what_the_clients_saw(exported, start, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    keys = tmp_path / "keys.yaml"
    client = peftstd("serve", "keys", "add", "client", "--scopes", "infer", "--keys", str(keys)).stdout.strip().splitlines()[-1]
    scraper = peftstd("serve", "keys", "add", "scraper", "--scopes", "metrics", "--keys", str(keys)).stdout.strip().splitlines()[-1]
    server = start(f"m={exported}", "--keys", str(keys))
    auth = {"Authorization": f"Bearer {client}"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: predict(server, "m", [TEXTS[i % len(TEXTS)]] if i % 5 else [""], headers=auth).status_code,
                                 range(40)))
    assert predict(server, "nope", ["great"], headers=auth).status_code == 404
    assert predict(server, "m", ["great"]).status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers=auth).status_code == 403  # the infer key lacks the metrics scope
    scraped = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {scraper}"})
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(scraped.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)

    def value(name: str, **labels) -> float:
        return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))

    route = "/v1/models/{name}/predict"
    assert value("peftstd_requests_total", model="m", route=route, status="200") == statuses.count(200) == 32
    assert value("peftstd_requests_total", model="m", route=route, status="422") == statuses.count(422) == 8
    assert value("peftstd_requests_total", model="", route=route, status="404") == 1  # made-up names add no series
    assert not value("peftstd_requests_total", model="nope")
    assert value("peftstd_requests_total", model="m", route=route, status="401") == 1
    assert value("peftstd_request_duration_seconds_count", model="m", route=route) == 41
    assert value("peftstd_rejections_total", reason="input") == 8 and value("peftstd_rejections_total", reason="auth") == 1
    assert value("peftstd_rejections_total", reason="scope") == 1
    assert value("peftstd_batch_size_sum", model="m") == 32 == value("peftstd_queue_duration_seconds_count", model="m")
    assert value("peftstd_inference_duration_seconds_count", model="m") == value("peftstd_batch_size_count", model="m") >= 1
    assert value("peftstd_tokenization_duration_seconds_count", model="m") == 40
    assert value("peftstd_queue_rows", model="m") == 0 and value("peftstd_requests_in_flight") == 1  # the scrape itself
    [info] = samples["peftstd_model_info"]
    assert info.labels["task"] == "text-classification" and info.labels["gate"] == "passed" and len(info.labels["export_sha256"]) == 64


def test_bad_requests_are_one_line_4xx(exported, start):
    server = start(f"m={exported}")
    url = f"{server.url}/v1/models/m/predict"
    cases = [
        (httpx.post(url, content=b"{not json", timeout=10), 400),
        (httpx.post(url, content=b"\xff\xfe\x00bad", timeout=10), 400),
        (httpx.post(url, json={"inputs": "a string"}, timeout=10), 422),
        (httpx.post(url, json={"inputs": []}, timeout=10), 422),
        (httpx.post(url, json={"inputs": [""]}, timeout=10), 422),
        (httpx.post(url, json={"inputs": [42]}, timeout=10), 422),
        (httpx.post(url, json={"inputs": ["ok"], "extra": 1}, timeout=10), 422),
        (httpx.post(f"{server.url}/v1/models/nope/predict", json={"inputs": ["ok"]}, timeout=10), 404),
        (httpx.get(f"{server.url}/no/such/route", timeout=10), 404),
        (httpx.get(url, timeout=10), 405),
        (httpx.post(f"{server.url}/v2/models/m/infer", json={"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
                    timeout=10), 400),
        (httpx.post(f"{server.url}/v2/models/m/infer", json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]},
                    timeout=10), 400),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        error = response.json()["error"]
        assert isinstance(error, str) and "\n" not in error and "Traceback" not in error


def v2_binary_request(inputs: list[tuple[str, str, list[int], bytes]], binary_outputs: list[str]) -> tuple[bytes, dict]:
    """A V2 request in the binary tensor extension, written from the protocol's text."""
    header = {"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}} for n, d, s, raw in inputs],
              "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in binary_outputs]}
    head = json.dumps(header).encode()
    return head + b"".join(raw for *_, raw in inputs), {"Inference-Header-Content-Length": str(len(head)),
                                                        "Content-Type": "application/octet-stream"}


def v2_binary_outputs(response: httpx.Response) -> dict[str, np.ndarray | list[bytes]]:
    size = int(response.headers["Inference-Header-Content-Length"])
    head, rest = json.loads(response.content[:size]), response.content[size:]
    out, offset = {}, 0
    for spec in head["outputs"]:
        n = spec["parameters"]["binary_data_size"]
        raw, offset = rest[offset : offset + n], offset + n
        if spec["datatype"] == "BYTES":
            values, i = [], 0
            while i < len(raw):
                (length,) = struct.unpack_from("<I", raw, i)
                values.append(raw[i + 4 : i + 4 + length])
                i += 4 + length
            out[spec["name"]] = values
        else:
            out[spec["name"]] = np.frombuffer(raw, dtype={"FP32": "<f4", "INT64": "<i8"}[spec["datatype"]]).reshape(spec["shape"])
    return out


def test_kserve_v2_json_and_binary(exported, start):
    from transformers import AutoTokenizer

    server = start(f"m={exported}", "--artifact", "fp32")
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert "binary_tensor_data" in httpx.get(f"{server.url}/v2").json()["extensions"]
    metadata = httpx.get(f"{server.url}/v2/models/m").json()
    assert {i["name"] for i in metadata["inputs"]} >= {"text", "input_ids", "attention_mask"}
    assert httpx.get(f"{server.url}/v2/models/m/versions/1/ready").status_code == 200
    reference = predict(server, "m", TEXTS[:3]).json()["outputs"]

    as_json = httpx.post(f"{server.url}/v2/models/m/infer", json={"id": "r1", "inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [3], "data": TEXTS[:3]}]}, timeout=30).json()
    assert as_json["id"] == "r1" and as_json["model_name"] == "m"
    outputs = {o["name"]: o for o in as_json["outputs"]}
    assert [v for v in outputs["label"]["data"]] == [r["label"] for r in reference]
    assert outputs["probabilities"]["shape"] == [3, 2]

    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in TEXTS[:3])
    body, headers = v2_binary_request([("text", "BYTES", [3, 1], raw)], ["label", "probabilities"])
    binary = v2_binary_outputs(httpx.post(f"{server.url}/v2/models/m/infer", content=body, headers=headers, timeout=30))
    assert [v.decode() for v in binary["label"]] == [r["label"] for r in reference]
    expected = np.array([[r["probabilities"][k] for k in ("negative", "positive")] for r in reference])
    assert np.abs(binary["probabilities"] - expected).max() < 1e-5

    tokenizer = AutoTokenizer.from_pretrained(exported)
    encoded = tokenizer(TEXTS[:3], padding=True, return_tensors="np")
    tensors = [(k, "INT64", list(encoded[k].shape), encoded[k].astype("<i8").tobytes()) for k in ("input_ids", "attention_mask", "token_type_ids")]
    body, headers = v2_binary_request(tensors, ["logits"])
    logits = v2_binary_outputs(httpx.post(f"{server.url}/v2/models/m/versions/1/infer", content=body, headers=headers, timeout=30))["logits"]
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert np.abs(probabilities - expected).max() < 1e-4  # token ids in, the model's logits out, as from Triton


def test_sigterm_drains_accepted_requests_and_exits_0(exported, start):
    server = start(f"m={exported}", "--max-batch-size", "2")
    expected = {t: predict(server, "m", [t]).json()["outputs"][0]["label"] for t in TEXTS}

    def call(i: int):
        text = TEXTS[i % len(TEXTS)]
        try:
            return text, predict(server, "m", [text] * 4)
        except httpx.TransportError as error:  # after the exit: the connection is refused, nothing was accepted
            return text, error

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(call, i) for i in range(160)]
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    assert server.process.wait(timeout=60) == 0
    answered = [(t, r) for t, r in results if isinstance(r, httpx.Response) and r.status_code == 200]
    refused = [r for _, r in results if isinstance(r, httpx.Response) and r.status_code == 503]
    other = [r for _, r in results if isinstance(r, httpx.Response) and r.status_code not in (200, 503)]
    assert answered and not other, [r.status_code for r in other]
    assert all(o["label"] == expected[t] for t, r in answered for o in r.json()["outputs"])
    assert all("shutting down" in r.json()["error"] for r in refused)
    assert refused or len(answered) < len(results)  # the burst outlasted the drain: later requests were turned away


def test_fuzzed_request_bodies_never_get_a_5xx(exported, start):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server = start(f"m={exported}")
    client = httpx.Client(base_url=server.url, timeout=30)
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=12)
    v2_input = st.fixed_dictionaries({"name": st.sampled_from(["text", "input_ids", "attention_mask", "x"]),
                                      "datatype": st.sampled_from(["BYTES", "INT64", "FP32", "INT8", "nope"]),
                                      "shape": st.lists(st.integers(-1, 3), max_size=3), "data": values})
    bodies = st.one_of(st.binary(max_size=200), values.map(lambda v: json.dumps(v).encode()),
                       st.fixed_dictionaries({"inputs": values}).map(lambda v: json.dumps(v).encode()),
                       st.fixed_dictionaries({"inputs": st.lists(v2_input, max_size=3)}).map(lambda v: json.dumps(v).encode()))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies, route=st.sampled_from(["/v1/models/m/predict", "/v2/models/m/infer"]),
           header=st.one_of(st.none(), st.integers(-5, 400).map(str), st.text(max_size=5)))
    def fuzz(body, route, header):
        # what a client can send: printable ASCII without surrounding whitespace (RFC 9110; httpx refuses b' ')
        sendable = header is not None and header.isprintable() and header.isascii() and header == header.strip()
        headers = {"Inference-Header-Content-Length": header} if sendable else {}
        response = client.post(route, content=body, headers=headers)
        assert response.status_code < 500, (route, body, response.text)
        assert "error" in response.json() or response.status_code == 200

    fuzz()
    good = client.post("/v1/models/m/predict", json={"inputs": ["the movie was great and fun"]})
    assert good.status_code == 200 and good.json()["outputs"][0]["label"]


def test_startup_refusals_are_one_line(exported, tmp_path):
    open_host = peftstd("serve", str(exported), "--host", "0.0.0.0")
    assert open_host.returncode == 2 and "without --keys" in open_host.stderr and "Traceback" not in open_host.stderr
    (tmp_path / "serve.yaml").write_text("max_batch_sise: 8\n")
    typo = peftstd("serve", str(exported), "--config", str(tmp_path / "serve.yaml"))
    assert typo.returncode == 2 and "max_batch_size" in typo.stderr
    missing = peftstd("serve", str(tmp_path))
    assert missing.returncode == 2 and "not an export folder" in missing.stderr
    artifact = peftstd("serve", str(exported), "--artifact", "fp16")
    assert artifact.returncode == 2 and "artifacts here" in artifact.stderr


def test_tls_serves_https(exported, tmp_path):
    """A self-signed certificate made with openssl (part of the base system)."""
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                           "-subj", "/CN=127.0.0.1", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    server = Server(f"m={exported}", "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem"), wait=False)
    server.url = server.url.replace("http://", "https://")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.url}/v2/health/ready", verify=False, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        response = httpx.post(f"{server.url}/v1/models/m/predict", json={"inputs": ["great"]}, verify=False, timeout=30)
        assert response.status_code == 200
    finally:
        assert server.stop() == 0


def serve_each(start, export: Path, inputs) -> list[dict]:
    server = start(f"m={export}")
    response = predict(server, "m", inputs)
    assert response.status_code == 200, response.text
    assert server.stop() == 0
    return response.json()["outputs"]


def test_ner_export_is_served_with_character_offsets(ner_export, start):
    text = "the  movie was great and wonderful but boring"
    outputs = serve_each(start, ner_export, [text])
    for entity in outputs[0]["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"] and 0 < entity["score"] <= 1
        assert entity["type"] in ("pos", "neg")
    assert len(outputs[0]["tags"]) == len(text.split())


def test_qa_export_is_served_with_character_offsets(qa_export, start):
    context = "the plot was dull and the acting was boring"
    outputs = serve_each(start, qa_export, [{"question": "which word", "context": context}])
    answer = outputs[0]
    assert answer["answer"] == context[answer["start"] : answer["end"]] and 0 <= answer["score"] <= 1


def test_generative_exports_are_served(sft_export, seq2seq_export, start):
    for export in (sft_export, seq2seq_export):
        outputs = serve_each(start, export, ["the movie was dull", {"prompt": "a fun film", "max_new_tokens": 3}])
        assert all(isinstance(o["text"], str) for o in outputs) and outputs[1]["tokens"] <= 3
        expected = peftstd("predict", str(export), "the movie was dull").stdout.split("\t")[0].strip()
        assert outputs[0]["text"].split()[:4] == expected.split()[:4]  # predict answers with its own 48-token budget


@pytest.fixture(scope="module")
def ner_export(tiny_model, tmp_path_factory):
    from test_token_classification import ner_rows

    return train_and_export(tmp_path_factory, "ner", ner_rows(240), [f"model.name={tiny_model}", "task.type=token-classification",
                            "evaluation.metric=f1", "training.max_steps=60", "training.learning_rate=0.005", "model.max_length=32"])


@pytest.fixture(scope="module")
def qa_export(tiny_model, tmp_path_factory):
    from test_question_answering import qa_rows

    return train_and_export(tmp_path_factory, "qa", qa_rows(240, longest=30), [f"model.name={tiny_model}", "task.type=question-answering",
                            "model.max_length=24", "task.doc_stride=8", "training.max_steps=30", "training.learning_rate=0.01"])


@pytest.fixture(scope="module")
def sft_export(tiny_llama, tmp_path_factory):
    from test_causal_lm import qa_rows

    return train_and_export(tmp_path_factory, "sft", qa_rows(160), [f"model.name={tiny_llama}", "task.type=causal-lm", "evaluation.metric=loss",
                            "model.max_length=32", "training.max_steps=20", "training.learning_rate=0.01", "generation.max_new_tokens=4",
                            "generation.samples=8"])


@pytest.fixture(scope="module")
def seq2seq_export(tiny_t5, tmp_path_factory):
    from test_seq2seq import source_target_rows

    return train_and_export(tmp_path_factory, "seq2seq", source_target_rows(160), [f"model.name={tiny_t5}", "task.type=seq2seq",
                            "evaluation.metric=loss", "model.max_length=32", "training.max_steps=20", "training.learning_rate=0.01",
                            "generation.max_new_tokens=4", "generation.samples=8"])


def train_and_export(tmp_path_factory, name: str, rows: list[dict], overrides: list[str]) -> Path:
    from conftest import run_recipe, write_jsonl

    out = tmp_path_factory.mktemp(f"serve-{name}")
    data = write_jsonl(out / "data.jsonl", rows)
    result = run_recipe([f"data.source={data}", f"output.dir={out}", f"output.name={name}", "training.batch_size=16",
                         "evaluation.batch_size=16", "training.precision=fp32", "evaluation.every_steps=10", *overrides])
    assert result.returncode == 0, result.stderr[-3000:]
    exported = subprocess.run([sys.executable, "-m", "peftstd", "export", str(out / name), "--budget", "100", "--out", str(out / "export")],
                              capture_output=True, text=True, cwd=REPO, env=RECIPE_ENV)
    assert exported.returncode == 0, exported.stderr[-3000:]
    return out / "export"


def test_openvino_runs_the_same_files_judged_by_the_gate(exported, start):
    from peftstd.runtime.choice import load_predictor

    report = json.loads((exported / "export.json").read_text())
    fp32 = next(r for r in report["gate"]["artifacts"] if r["artifact"] == "fp32")
    assert fp32["openvino"]["parity_passed"] and fp32["openvino"]["max_abs_logit_difference"] < 1e-4
    assert all("openvino" in r or r.get("runtime") == "openvino" for r in report["gate"]["artifacts"])  # NNCF's IR: judged there only
    reference = load_predictor(exported, "fp32").predict(TEXTS)
    openvino = load_predictor(exported, "fp32", "openvino")
    assert openvino.engine.runtime == "openvino"
    got = openvino.predict(TEXTS)
    assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in zip(reference, got) for k in a["probabilities"]) < 1e-4
    server = start(f"m={exported}", "--runtime", "openvino")
    listing = httpx.get(f"{server.url}/v1/models/m").json()
    assert listing["runtime"] == "openvino" and listing["device"].startswith("openvino")
    assert predict(server, "m", TEXTS[:2]).status_code == 200


def test_v2_token_ids_without_token_type_ids_are_one_segment(exported, start):
    """tritonclient users send the tokenizer's input_ids and attention_mask only (found by the stock-client check)."""
    server = start(f"m={exported}", "--artifact", "fp32")
    ids = {"input_ids": [[2, 10, 11, 3]], "attention_mask": [[1, 1, 1, 1]]}
    body = {"inputs": [{"name": k, "datatype": "INT64", "shape": [1, 4], "data": v} for k, v in ids.items()]}
    response = httpx.post(f"{server.url}/v2/models/m/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    with_types = {**body, "inputs": body["inputs"] + [{"name": "token_type_ids", "datatype": "INT64", "shape": [1, 4], "data": [[0] * 4]}]}
    same = httpx.post(f"{server.url}/v2/models/m/infer", json=with_types, timeout=30)
    assert response.json()["outputs"][0]["data"] == same.json()["outputs"][0]["data"]
