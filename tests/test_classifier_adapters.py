"""Text-classification LoRA runs of one base served as adapters of one copy of it, each with its own head (two label
sets of different sizes), next to an export in the same process: each answers as its own run's model does, alone
and under concurrent mixed traffic. Servers run on 127.0.0.1; request loops are bounded."""

from __future__ import annotations

import concurrent.futures
import random

import httpx
import numpy as np
import pytest
from conftest import FILLER, NEGATIVE, POSITIVE, run_recipe, tiny_overrides, write_jsonl

TEXTS = ["the movie was dull", "a fun film", "the plot and the acting", "quite a charming story", "the story was really tedious"]


@pytest.fixture(scope="module")
def topic_run(tiny_model, tmp_path_factory):
    """A second LoRA run of the tiny BERT with three labels: positive, negative, and neutral (no sentiment word)."""
    rng, rows = random.Random(3), []
    for i in range(240):
        label = ("positive", "negative", "neutral")[i % 3]
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 12))]
        if label != "neutral":
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    out = tmp_path_factory.mktemp("three-labels")
    data = write_jsonl(out / "three.jsonl", rows)
    result = run_recipe(tiny_overrides(tiny_model, data, out, "three", "method=lora", "training.max_steps=12", "training.seed=5"))
    assert result.returncode == 0, result.stderr[-2000:]
    return out / "three"


def own_probabilities(run, texts: list[str]) -> list[dict[str, float]]:
    """The run's own PyTorch model (stock peft reload), one text at a time."""
    import torch

    from peftstd.runtime.load import load_run

    loaded = load_run(run)
    found = []
    for text in texts:
        with torch.inference_mode():
            logits = loaded.model(**loaded.tokenizer(text, truncation=True, max_length=32, return_tensors="pt")).logits[0]
        found.append(dict(zip(loaded.labels, torch.softmax(logits.double(), -1).tolist())))
    return found


def predict(url: str, name: str, texts: list[str]) -> list[dict]:
    response = httpx.post(f"{url}/v1/models/{name}/predict", json={"inputs": texts}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["outputs"]


def close(served: list[dict], expected: list[dict[str, float]]) -> bool:
    return all(o["probabilities"].keys() == e.keys() and max(abs(o["probabilities"][k] - e[k]) for k in e) < 1e-5
               for o, e in zip(served, expected))


def test_classification_runs_share_one_base_with_their_own_heads(trained, topic_run, exported, start):
    from peftstd.runtime.folders import ExportFolder

    server = start(f"sentiment={trained['lora']}", f"three={topic_run}", f"exported={exported}")
    listing = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    for name, labels in (("sentiment", ["negative", "positive"]), ("three", ["negative", "neutral", "positive"])):
        assert listing[name]["artifact"] == "adapter" and listing[name]["runtime"] == "pytorch"
        assert sorted(listing[name]["labels"]) == labels and listing[name]["adapters_on_base"] == ["sentiment", "three"]
    assert listing["sentiment"]["base_model"] == listing["three"]["base_model"]
    fastest = ExportFolder(exported).record.choice.timings[0]  # an export next to them is served as before
    assert (listing["exported"]["artifact"], listing["exported"]["runtime"]) == (fastest.artifact, fastest.runtime)

    expected = {"sentiment": own_probabilities(trained["lora"], TEXTS), "three": own_probabilities(topic_run, TEXTS)}
    assert close(predict(server.url, "sentiment", TEXTS), expected["sentiment"])  # a batch of five, padded
    assert close(predict(server.url, "three", TEXTS), expected["three"])
    assert expected["sentiment"][0].keys() != expected["three"][0].keys()

    jobs = [(name, i) for _ in range(6) for name in ("sentiment", "three") for i in range(len(TEXTS))]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: predict(server.url, job[0], [TEXTS[job[1]]])[0], jobs))
    assert all(close([a], [expected[name][i]]) for a, (name, i) in zip(answers, jobs))
    assert np.isclose(sum(answers[1]["probabilities"].values()), 1.0)

    v2 = httpx.get(f"{server.url}/v2/models/three").json()
    assert v2["platform"] == "pytorch_peft" and v2["outputs"][2]["shape"] == [-1, 3]


def test_a_run_that_cannot_share_its_base_is_refused_in_one_line(trained):
    from conftest import peftstd

    result = peftstd("serve", f"a={trained['adapter']}", "--port", "1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "only lora runs share a base as adapters" in result.stderr and len(result.stderr.strip().splitlines()) == 1
