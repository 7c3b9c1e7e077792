"""Causal LMs served the way their users call them: OpenAI's routes (through the stock `openai` client and as raw
SSE with httpx), continuous batching (a row's greedy tokens equal the same request alone), seeds and stop strings,
a client leaving mid-stream, LoRA runs of one base served side by side and loaded/unloaded under load, and OpenAI's
error shape for bad input. Servers run on 127.0.0.1; every request loop is bounded in count and time."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import RECIPE_ENV, REPO, peftstd

PROMPTS = ["the movie was dull", "a fun film", "the plot was awful and the acting was clumsy", "great",
           "quite a charming story and a very moving film", "the story", "boring", "the acting was superb"]


def chat(url: str, model: str, content: str, timeout: float = 60, **settings) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **settings}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)


def text_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def sse_events(response: httpx.Response) -> list:
    """The `data:` payloads of an SSE body, in order ('[DONE]' kept as a string)."""
    events = []
    for line in response.text.split("\n"):
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"not an SSE line: {line!r}"
    return events


@pytest.fixture(scope="module")
def lm(tiny_llama, tmp_path_factory):
    """Two LoRA chat runs of the tiny Llama (different seeds and data order) and the first one's export with int8."""
    from conftest import run_recipe, write_jsonl
    from test_causal_lm import qa_rows

    out = tmp_path_factory.mktemp("llm-serve")
    data = write_jsonl(out / "data.jsonl", qa_rows(160))
    runs = {}
    for name, seed in (("a", 1), ("b", 7)):
        result = run_recipe([f"model.name={tiny_llama}", f"data.source={data}", f"output.dir={out}", f"output.name={name}",
                             "task.type=causal-lm", "evaluation.metric=loss", "model.max_length=32", "training.max_steps=20",
                             "training.learning_rate=0.01", f"training.seed={seed}", "generation.max_new_tokens=4",
                             "generation.samples=4", "training.batch_size=16", "evaluation.batch_size=16",
                             "training.precision=fp32", "evaluation.every_steps=10"])
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = out / name
    exported = subprocess.run([sys.executable, "-m", "peftstd", "export", str(runs["a"]), "--int8", "--budget", "100",
                               "--out", str(out / "export")], capture_output=True, text=True, cwd=REPO, env=RECIPE_ENV)
    assert exported.returncode == 0, exported.stderr[-3000:]
    return {"runs": runs, "export": out / "export"}


def long_seed(url: str, model: str, tokens: int = 60) -> int:
    """A seed whose sampled answer runs to `tokens` tokens without an end of turn (the tiny model often stops early)."""
    for seed in range(40):
        answer = chat(url, model, "the movie", max_tokens=tokens, temperature=1.5, seed=seed).json()
        if answer["choices"][0]["finish_reason"] == "length":
            return seed
    raise AssertionError("no seed in 0..39 gave a long answer")


def test_the_openai_client_lists_completes_and_streams(lm, start):
    from openai import OpenAI

    keys, key = make_keys(lm["export"].parent)
    server = start(f"chat={lm['export']}", "--keys", str(keys))
    client = OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)
    models = client.models.list()
    assert [m.id for m in models.data] == ["chat"] and models.data[0].model_extra["task"] == "causal-lm"
    answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a fun film"}], max_tokens=12,
                                            temperature=0)
    assert answer.object == "chat.completion" and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens >= 1 and answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    pieces, finishes = [], []
    with client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a fun film"}], max_tokens=12,
                                        temperature=0, stream=True, stream_options={"include_usage": True}) as stream:
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finishes.append(chunk.choices[0].finish_reason)
            else:
                usage = chunk.usage
    assert "".join(pieces) == answer.choices[0].message.content and finishes[-1] == answer.choices[0].finish_reason
    assert sum(bool(p) for p in pieces) >= 2 or answer.usage.completion_tokens < 2  # token by token, not one blob
    assert usage.completion_tokens == answer.usage.completion_tokens
    completion = client.completions.create(model="chat", prompt="the movie was", max_tokens=5, temperature=0)
    assert completion.object == "text_completion" and completion.usage.completion_tokens <= 5
    from openai import AuthenticationError, BadRequestError, NotFoundError

    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


def make_keys(folder) -> tuple:
    """A key file with one infer+read key, and the key."""
    from peftstd.serve.keys import add_key

    path = folder / "keys.json"
    path.unlink(missing_ok=True)
    return path, add_key(path, "client", ("infer", "read"))


def test_sse_wire_format_and_usage(lm, start):
    server = start(f"chat={lm['export']}")
    body = {"model": "chat", "messages": [{"role": "user", "content": "a fun film"}], "max_tokens": 8, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-1]["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] <= 8
    alone = text_of(chat(server.url, "chat", "a fun film", max_tokens=8, temperature=0))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == alone
    plain = httpx.post(f"{server.url}/v1/completions", json={**body, "prompt": "the movie", "messages": None} | {"messages": None}, timeout=60)
    assert plain.status_code == 400 and plain.json()["error"]["param"] == "messages"  # an unknown field is named


@pytest.mark.parametrize("artifact", ["fp32", "int8"])
def test_concurrent_requests_equal_the_same_requests_alone(lm, start, artifact):
    """Greedy, and seeded sampling (long answers: the tiny model's greedy ones end after a few tokens)."""
    server = start(f"chat={lm['export']}", "--artifact", artifact)
    seed = long_seed(server.url, "chat", 40)
    requests = [(p, {"temperature": 0}) for p in PROMPTS] + [(p, {"temperature": 1.5, "seed": seed + i}) for i, p in enumerate(PROMPTS)]

    def ask(request):
        prompt, settings = request
        return text_of(chat(server.url, "chat", prompt, max_tokens=40, **settings))

    alone = [ask(r) for r in requests]
    assert len(set(alone)) > 4 and max(len(a.split()) for a in alone) >= 10
    assert httpx.get(f"{server.url}/v1/models/chat").json()["largest_decode_batch"] == 1
    for _ in range(2):
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            assert list(pool.map(ask, requests)) == alone
    info = httpx.get(f"{server.url}/v1/models/chat").json()
    assert info["largest_decode_batch"] >= 6  # the requests really shared decode steps
    assert info["artifact"] == ("fp32" if artifact == "fp32" else "int8-weights")


def test_seed_stop_and_limits(lm, start):
    server = start(f"chat={lm['export']}")
    seed = long_seed(server.url, "chat")
    first = text_of(chat(server.url, "chat", "the movie", max_tokens=60, temperature=1.5, seed=seed))
    assert text_of(chat(server.url, "chat", "the movie", max_tokens=60, temperature=1.5, seed=seed)) == first
    words = first.split()
    stop = next(w for w in words[2:] if w not in words[:2])
    cut = chat(server.url, "chat", "the movie", max_tokens=60, temperature=1.5, seed=seed, stop=[stop]).json()
    assert cut["choices"][0]["finish_reason"] == "stop" and stop not in cut["choices"][0]["message"]["content"]
    assert first.startswith(cut["choices"][0]["message"]["content"].rstrip())
    short = chat(server.url, "chat", "the movie", max_tokens=3, temperature=1.5, seed=seed).json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 3
    early = next(p for p in PROMPTS  # the tiny model's greedy answers often end after a few tokens
                 if chat(server.url, "chat", p, max_tokens=40, temperature=0).json()["choices"][0]["finish_reason"] == "stop")
    past = chat(server.url, "chat", early, max_tokens=40, temperature=0, ignore_eos=True).json()  # vLLM's extension
    assert past["choices"][0]["finish_reason"] == "length" and past["usage"]["completion_tokens"] == 40


def test_a_client_leaving_mid_stream_frees_its_row_at_once(lm, start):
    server = start(f"chat={lm['export']}", "--max-new-tokens-limit", "100")
    seed = long_seed(server.url, "chat", 100)
    body = {"model": "chat", "messages": [{"role": "user", "content": "the movie"}], "max_tokens": 100, "temperature": 1.5,
            "seed": seed, "stream": True}
    before = httpx.get(f"{server.url}/v1/models/chat").json()["generated_tokens"]
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]  # the role chunk and a few tokens, with their blank separators
        assert any('"content"' in line for line in received)
    left = time.monotonic()
    while time.monotonic() - left < 5:
        info = httpx.get(f"{server.url}/v1/models/chat").json()
        if info["running_sequences"] == 0 and info["cancelled"] >= 1:
            break
        time.sleep(0.05)
    assert info["running_sequences"] == 0 and info["cancelled"] == 1, info
    generated = info["generated_tokens"] - before
    time.sleep(0.5)
    assert httpx.get(f"{server.url}/v1/models/chat").json()["generated_tokens"] - before == generated < 50  # of 100 it would give
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'peftstd_time_to_first_token_seconds_count{model="chat"}' in metrics
    assert 'peftstd_inter_token_latency_seconds_count{model="chat"}' in metrics
    window = next(line for line in metrics.splitlines() if line.startswith('peftstd_drift_window_size{model="chat"}'))
    assert float(window.split()[-1]) >= 2  # the prompts are observed against the export's monitor.json


def test_lora_runs_share_one_base_and_mixed_batches_match_each_alone(lm, start):
    from peftstd.runtime.load import load_run

    runs = lm["runs"]
    server = start(f"a={runs['a']}", f"b={runs['b']}")
    listing = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [m["id"] for m in listing] == ["a", "b"] and {m["runtime"] for m in listing} == {"pytorch"}
    alone = {(m, p): text_of(chat(server.url, m, p, max_tokens=12, temperature=0)) for m in ("a", "b") for p in PROMPTS}
    assert any(alone["a", p] != alone["b", p] for p in PROMPTS)  # two different adapters, not one served twice
    pairs = [(m, p) for p in PROMPTS for m in ("a", "b")]
    with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
        mixed = list(pool.map(lambda mp: text_of(chat(server.url, mp[0], mp[1], max_tokens=12, temperature=0)), pairs))
    assert mixed == [alone[pair] for pair in pairs]
    info = httpx.get(f"{server.url}/v1/models/a").json()
    assert info["mean_decode_batch"] > 1.5
    # the served adapter is the run's own: greedy decoding through peft's generate gives the same text
    import torch

    loaded = load_run(runs["b"])
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
    assert loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == alone["b", PROMPTS[0]]


def test_adapters_load_and_unload_under_load_without_a_failed_request(lm, start, tmp_path):
    runs = lm["runs"]
    server = start(f"a={runs['a']}")
    expected = text_of(chat(server.url, "a", PROMPTS[2], max_tokens=10, temperature=0))
    failures, answers, stop = [], [], threading.Event()

    def load():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            response = chat(server.url, "a", PROMPTS[2], max_tokens=10, temperature=0)
            (answers if response.status_code == 200 else failures).append(response)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        added = httpx.post(f"{server.url}/v1/adapters", json={"name": "b", "path": str(runs["b"])}, timeout=60)
        assert added.status_code == 200, added.text
        b_text = text_of(chat(server.url, "b", PROMPTS[2], max_tokens=10, temperature=0))
        streaming = concurrent.futures.ThreadPoolExecutor(1).submit(chat, server.url, "b", PROMPTS[0], max_tokens=30, temperature=0)
        time.sleep(0.05)
        removed = httpx.delete(f"{server.url}/v1/adapters/b", timeout=60)
        assert removed.status_code == 200 and removed.json()["adapters"] == ["a"]
        assert streaming.result().status_code == 200  # a request running on the adapter as it was removed still finished
        gone = chat(server.url, "b", PROMPTS[2], max_tokens=10)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    assert not failures, [f.text for f in failures[:3]]
    assert answers and all(text_of(a) == expected for a in answers)
    assert isinstance(b_text, str)
    wrong = httpx.post(f"{server.url}/v1/adapters", json={"name": "c", "path": str(tmp_path)}, timeout=30)
    assert wrong.status_code == 422 and "not a finished run" in wrong.json()["error"]


BAD = [
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ({"model": "chat", "messages": []}, 400, "messages"),
    ({"model": "chat", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
    ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature"),
    ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 1.0}, 400, "presence_penalty"),
    ({"model": "chat", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "messages.0.content"),
    ({"model": "chat", "messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
]


def test_bad_requests_get_openai_errors_and_the_fuzzer_finds_no_5xx(lm, start):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server = start(f"chat={lm['export']}", "--max-body-bytes", "20000")
    client = httpx.Client(base_url=server.url, timeout=60)
    for body, status, param in BAD:
        response = client.post("/v1/chat/completions", json=body)
        error = response.json()["error"]
        assert response.status_code == status and error["param"] == param and error["message"] and error["type"], (body, response.text)
        assert "\n" not in error["message"]
    for content, status in ((b"{not json", 400), (b"[1, 2]", 400), (b'{"model": "chat", "prompt": "' + b"x" * 30000 + b'"}', 413)):
        response = client.post("/v1/completions", content=content)
        assert response.status_code == status and response.json()["error"]["message"], response.text
    window = client.post("/v1/completions", json={"model": "chat", "prompt": "the movie " * 70, "max_tokens": 100})
    assert window.status_code == 400 and window.json()["error"]["code"] == "context_length_exceeded"

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=False, width=32), st.text(max_size=12))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                          max_leaves=8)
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", 3]), "content": values})
    chat_bodies = st.fixed_dictionaries({"model": st.sampled_from(["chat", "x"]), "messages": st.lists(message, max_size=3)},
                                        optional={"max_tokens": values, "temperature": values, "top_p": values, "seed": values,
                                                  "stop": values, "n": values, "stream": st.booleans(), "extra": values})
    bodies = st.one_of(st.binary(max_size=120), values.map(lambda v: json.dumps(v).encode()), chat_bodies.map(lambda v: json.dumps(v).encode()),
                       chat_bodies.map(lambda v: json.dumps({**{k: x for k, x in v.items() if k != "messages"}, "prompt": "the movie"}).encode()))

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies, route=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
    def fuzz(body, route):
        response = client.post(route, content=body)
        assert response.status_code < 500, (route, body, response.text)
        if response.status_code != 200:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    fuzz()
    assert text_of(chat(server.url, "chat", "a fun film", max_tokens=4, temperature=0)) is not None


def test_generative_predict_and_v2_share_the_continuous_batch(lm, start):
    server = start(f"chat={lm['export']}")
    alone = text_of(chat(server.url, "chat", PROMPTS[1], max_tokens=6, temperature=0))
    predicted = httpx.post(f"{server.url}/v1/models/chat/predict", json={"inputs": [{"prompt": PROMPTS[1], "max_new_tokens": 6}]},
                           timeout=60).json()["outputs"][0]
    assert predicted["text"] == alone.strip() and predicted["tokens"] <= 6
    expected = peftstd("predict", str(lm["export"]), PROMPTS[1]).stdout.split("\t")[0].strip()
    assert predicted["text"].split()[:3] == expected.split()[:3]
    v2 = httpx.post(f"{server.url}/v2/models/chat/infer", json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                                             "data": [PROMPTS[1]]}]}, timeout=60)
    assert v2.status_code == 200 and v2.json()["outputs"][0]["data"][0].split()[:2] == predicted["text"].split()[:2]
