"""Every method trains end to end through the recipe, writes the run-directory contract,
and reloads into a model whose predictions equal those the run reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_recipe, tiny_overrides

CONTRACT = ["config.yaml", "manifest.json", "metrics.json", "labels.json", "report.md", "README.md", "curves.png",
            "predictions/test.jsonl", "checkpoints/best"]
STANDARD_METRICS = {"accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_precision", "micro_recall", "micro_f1", "loss"}


@pytest.fixture(scope="module")
def runs(tiny_model, sentiment_file, tmp_path_factory) -> dict[str, Path]:
    """One finished tiny run per method (trained once, shared by the tests below)."""
    out = tmp_path_factory.mktemp("runs")
    finished = {}
    for method in ("full", "lora", "adalora", "adapter"):
        # AdaLoRA: one evaluation at the last step, so the selected model carries the final rank pattern.
        extra = ["adalora.reallocation_interval=2", "training.max_steps=20", "evaluation.every_steps=20"] if method == "adalora" else []
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, out, method, f"method={method}", *extra))
        assert result.returncode == 0, result.stderr[-3000:]
        finished[method] = out / method
    return finished


def recorded_predictions(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["full", "lora", "adalora", "adapter"])
def test_run_directory_holds_the_contract(runs, method):
    run = runs[method]
    for name in CONTRACT:
        assert (run / name).exists(), name
    weights = run / ("model" if method == "full" else "adapter")
    assert (weights / "tokenizer.json").is_file()
    assert any((run / "tensorboard").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["schema_version"] == "1.0" and manifest["method"]["name"] == method
    assert set(manifest["data"]["sha256"]) == {"train", "validation", "test"}
    assert manifest["base_model"]["weights_sha256"]
    assert manifest["packages"]["torch"] and manifest["hardware"]["cores"]
    assert 0 < manifest["parameters"]["trainable"] <= manifest["parameters"]["total"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == STANDARD_METRICS
    assert metrics["history"]["validation"] and metrics["best"]["step"] is not None
    assert "Confusion matrix" in (run / "report.md").read_text()


def test_peft_methods_train_only_a_small_share(runs):
    shares = {m: json.loads((runs[m] / "manifest.json").read_text())["parameters"]["trainable_percent"] for m in runs}
    assert shares["full"] == 100.0
    assert all(shares[m] < 100.0 for m in ("lora", "adalora", "adapter"))


@pytest.mark.parametrize("method", ["full", "lora", "adalora", "adapter"])
def test_reloaded_model_reproduces_the_reported_predictions(runs, method):
    from peftstd.runtime.load import load_run

    loaded = load_run(runs[method])
    recorded = recorded_predictions(runs[method])
    batch = loaded.tokenizer([r["text"] for r in recorded], padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**batch).logits.numpy()
    expected = np.array([r["logits"] for r in recorded])
    assert [loaded.labels[i] for i in logits.argmax(-1)] == [r["prediction"] for r in recorded]
    assert np.abs(logits - expected).max() < 1e-4


STOCK_PEFT_RELOAD = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import PeftModel
run = sys.argv[1]
manifest = json.load(open(run + "/manifest.json"))
labels = json.load(open(run + "/labels.json"))
base = AutoModelForSequenceClassification.from_pretrained(manifest["base_model"]["path"], num_labels=len(labels))
model = PeftModel.from_pretrained(base, run + "/adapter").eval()
tokenizer = AutoTokenizer.from_pretrained(run + "/adapter")
rows = [json.loads(line) for line in open(run + "/predictions/test.jsonl")]
batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
with torch.no_grad():
    predicted = model(**batch).logits.argmax(-1).tolist()
assert "peftstd" not in sys.modules
print(json.dumps([labels[i] for i in predicted]))
"""


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_adapter_loads_with_stock_peft_and_no_peftstd_import(runs, method):
    result = subprocess.run([sys.executable, "-c", STOCK_PEFT_RELOAD, str(runs[method])], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [r["prediction"] for r in recorded_predictions(runs[method])]


def test_adalora_reallocates_ranks_and_records_the_pattern(runs):
    manifest = json.loads((runs["adalora"] / "manifest.json").read_text())["method"]
    ranks = manifest["rank_pattern"]
    assert ranks, "AdaLoRA wrote no rank pattern: update_and_allocate never ran"
    assert any(rank != manifest["init_rank"] for rank in ranks.values())
    assert max(ranks.values()) <= manifest["init_rank"]
    assert sum(ranks.values()) == manifest["target_rank"] * len(ranks)  # the final budget, reallocated unevenly


@pytest.mark.parametrize("method", ["full", "lora", "adapter"])
def test_model_card_front_matter_carries_the_run_metrics(runs, method):
    import yaml

    card = (runs[method] / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    test = json.loads((runs[method] / "metrics.json").read_text())["test"]
    reported = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert reported["accuracy"] == round(test["accuracy"], 4) and reported["f1"] == round(test["macro_f1"], 4)
    assert meta["library_name"] == {"full": "transformers", "lora": "peft", "adapter": "adapters"}[method]
    assert meta["base_model"].endswith("tiny-bert0")  # a local folder is named as it was given
    assert "## How to reproduce" in card and "recipes/finetune.py" in card
