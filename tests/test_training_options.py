"""Recipe options beyond the defaults: multi-class labels, Houlsby adapters, early stopping."""

from __future__ import annotations

import json

from conftest import run_recipe, synthetic_rows, tiny_overrides, write_jsonl


def test_multi_class_labels_train_and_report_per_class(tiny_model, tmp_path):
    rows = synthetic_rows(180)
    for i, row in enumerate(rows):
        if i % 3 == 2:
            row["label"] = "neutral"
    data = write_jsonl(tmp_path / "three.jsonl", rows)
    result = run_recipe(tiny_overrides(tiny_model, data, tmp_path, "three", "training.max_steps=4"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "three" / "labels.json").read_text()) == ["negative", "neutral", "positive"]
    assert "| **neutral** |" in (tmp_path / "three" / "report.md").read_text()


def test_houlsby_adapters_sit_after_attention_and_ffn(tiny_model, sentiment_file, tmp_path):
    trainable = {}
    for placement in ("pfeiffer", "houlsby"):
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, placement, "method=adapter",
                                           f"adapter.placement={placement}", "training.max_steps=2"))
        assert result.returncode == 0, result.stderr[-2000:]
        trainable[placement] = json.loads((tmp_path / placement / "manifest.json").read_text())["parameters"]["trainable"]
    head = 32 * 2 + 2  # the classifier, trained by both
    assert trainable["houlsby"] - head == 2 * (trainable["pfeiffer"] - head)  # twice the bottlenecks


def test_early_stopping_ends_the_run_and_keeps_the_best_checkpoint(tiny_model, sentiment_file, tmp_path):
    result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "early", "training.max_steps=200",
                                       "evaluation.every_steps=1", "evaluation.metric=loss", "evaluation.early_stopping_patience=2",
                                       "training.learning_rate=0.5"))
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "early" / "manifest.json").read_text())
    metrics = json.loads((tmp_path / "early" / "metrics.json").read_text())
    assert manifest["training"]["stopped_early"] and manifest["training"]["optimizer_steps"] < 200
    losses = {r["step"]: r["loss"] for r in metrics["history"]["validation"]}
    assert metrics["best"]["value"] == min(losses.values()) and losses[metrics["best"]["step"]] == metrics["best"]["value"]
    assert len(losses) == metrics["best"]["step"] + 2  # stopped after two evaluations without improvement
