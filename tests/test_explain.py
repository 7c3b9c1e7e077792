"""`peftstd explain`: Integrated Gradients attributions satisfy completeness; terminal and HTML output."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import peftstd


def test_attributions_sum_to_the_logit_difference_within_the_reported_delta(trained):
    from peftstd.evaluation.explain import explain_text
    from peftstd.runtime.load import load_run

    loaded = load_run(trained["lora"])
    result = explain_text(loaded, "the movie was great and fun", steps=128, max_length=32)
    # Recompute both logits independently of the explainer.
    tokenizer, model = loaded.tokenizer, loaded.model.eval()
    encoded = tokenizer("the movie was great and fun", return_tensors="pt")
    ids = encoded["input_ids"][0]
    special = torch.tensor(tokenizer.get_special_tokens_mask(ids.tolist(), already_has_special_tokens=True)).bool()
    baseline = torch.where(special, ids, torch.tensor(tokenizer.pad_token_id)).unsqueeze(0)
    with torch.no_grad():
        logits = model(**encoded).logits[0]
        baseline_logits = model(input_ids=baseline, attention_mask=encoded["attention_mask"], token_type_ids=encoded["token_type_ids"]).logits[0]
    assert len(result["classes"]) == len(loaded.labels) and len(result["tokens"]) == len(ids)
    for index, cls in enumerate(result["classes"]):
        difference = float(logits[index] - baseline_logits[index])
        total = sum(cls["attributions"])
        assert abs(total - difference) <= abs(cls["convergence_delta"]) + 1e-5
        assert abs(cls["convergence_delta"]) <= 0.05 * abs(difference) + 1e-4


def test_explain_command_prints_and_writes_html_and_json(trained, tmp_path):
    result = peftstd("explain", str(trained["lora"]), "a dull and tedious plot", "--steps", "16",
                     "--html", str(tmp_path / "e.html"), "--json", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prediction:" in result.stdout and "delta" in result.stdout
    page = (tmp_path / "e.html").read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "background:rgb" in page
    assert json.loads((tmp_path / "e.json").read_text())[0]["classes"][0]["attributions"]


def test_report_on_data_holds_wrong_most_and_least_confident_predictions(trained, tmp_path):
    result = peftstd("explain", str(trained["lora"]), "--n", "9", "--split", "validation", "--steps", "8",
                     "--html", str(tmp_path / "report.html"), "--json", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    explained = json.loads((tmp_path / "report.json").read_text())
    assert len(explained) == 9 and len({r["text"] for r in explained}) == 9
    page = (tmp_path / "report.html").read_text()
    assert all(heading in page for heading in ("Wrong predictions", "Most confident predictions", "Least confident predictions"))
    assert page.count("true label") == 9


def test_pick_examples_orders_by_confidence_and_never_repeats():
    from peftstd.evaluation.explain import pick_examples

    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45], [0.99, 0.01], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1, 0, 1])  # rows 2 and 3 are wrong; 2 more confidently
    chosen = pick_examples(probabilities, labels, 4)
    assert list(chosen.values()) == [[2], [4, 0], [1]]
    assert sum(map(len, pick_examples(probabilities, labels, 50).values())) == 6


def test_explain_refuses_texts_and_n_together(trained):
    result = peftstd("explain", str(trained["lora"]), "some text", "--n", "5")
    assert result.returncode == 2 and "either TEXTS or --n" in result.stderr
