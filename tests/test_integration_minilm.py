"""Integration: the real MiniLM and the real VADER data through the default recipe (short schedule)."""

from __future__ import annotations

import json

import pytest
from conftest import run_recipe

pytestmark = pytest.mark.integration


def test_default_recipe_learns_real_sentiment_with_minilm(tmp_path):
    result = run_recipe([f"output.dir={tmp_path}", "output.name=minilm", "training.max_steps=80", "training.learning_rate=1e-3", "evaluation.every_steps=40"])
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "minilm"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["base_model"]["source"] == "registry:minilm"
    assert manifest["data"]["sizes"] == {"train": 8058, "validation": 1007, "test": 1007}
    assert manifest["data"]["truncated"] == {"train": 0, "validation": 0, "test": 0}
    assert manifest["training"]["precision"] in {"bf16", "fp32"}
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["accuracy"] > 0.75, test  # 80 LoRA steps on 2,560 snippets; chance is 0.5
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "latest").resolve() == run.resolve()
