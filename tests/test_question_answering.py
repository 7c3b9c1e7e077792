"""Extractive question answering: offset mapping, windows over long contexts, SQuAD scores, training."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import FILLER, NEGATIVE, POSITIVE, peftstd, run_recipe, write_jsonl

from peftstd.data.examples import QAExample
from peftstd.tasks.question_answering import QuestionAnswering, exact_match, normalize_answer, squad_scores, token_f1

# Written for these tests: answers at the start, middle and end of their contexts, with punctuation around them.
HANDWRITTEN = [
    QAExample("which word", "great, the movie was.", ("great",), (0,)),
    QAExample("which word", "the plot was dull and the acting was boring.", ("dull",), (13,)),
    QAExample("which words", "a story, really very charming", ("very charming",), (16,)),
]


def qa_row(rng: random.Random, length: int) -> dict:
    """A context of `length` filler words with one sentiment word somewhere; the question asks for it."""
    word = rng.choice(POSITIVE + NEGATIVE)
    words = [rng.choice(FILLER) for _ in range(length)]
    words.insert(rng.randrange(length + 1), word)
    context = " ".join(words)
    position = context.index(f" {word}") + 1 if not context.startswith(word + " ") else 0
    return {"question": "which word", "context": context, "answers": {"text": [word], "answer_start": [position]}}


def qa_rows(n: int, seed: int = 0, longest: int = 12) -> list[dict]:
    rng = random.Random(seed)
    return [qa_row(rng, rng.randint(3, longest)) for _ in range(n)]


def test_squad_normalization_and_scores():
    assert normalize_answer("The  Great, movie!") == "great movie"
    assert exact_match("the great movie", "Great movie.") == 1.0
    assert token_f1("great movie today", "great movie") == pytest.approx(0.8)
    assert token_f1("nothing", "great movie") == 0.0
    scores = squad_scores(["great", "wrong"], [QAExample("q", "great", ("a great",), (0,)), QAExample("q", "x", ("x", "wrong"), (0, 0))])
    assert scores == {"exact_match": 1.0, "f1": 1.0}  # articles ignored; the best of several gold answers counts


def test_answer_positions_map_to_the_answer_text(tiny_model):
    from transformers import AutoTokenizer

    tokenizer, task = AutoTokenizer.from_pretrained(tiny_model), QuestionAnswering(settings={"doc_stride": 4})
    split = task.encode(tokenizer, HANDWRITTEN, [], 32)
    assert len(split) == 3
    for feature, row in zip(split.features, HANDWRITTEN):
        pieces = feature["input_ids"][feature["start_positions"] : feature["end_positions"] + 1]
        assert tokenizer.decode(pieces) == row.answers[0]
        _, _, offsets = task.windows[feature["feature_id"]]
        assert row.context[offsets[feature["start_positions"]][0] : offsets[feature["end_positions"]][1]] == row.answers[0]
        assert offsets[0] is None and offsets[1] is None  # [CLS] and the question are not part of any answer


def test_long_contexts_become_overlapping_windows_and_answers_come_back_exactly(tiny_model):
    """Logits that peak at each window's gold positions must give back every gold answer, wherever it lies."""
    from transformers import AutoTokenizer

    tokenizer, task = AutoTokenizer.from_pretrained(tiny_model), QuestionAnswering(settings={"doc_stride": 6})
    rows = [QAExample(**{**r, "answers": tuple(r["answers"]["text"]), "answer_starts": tuple(r["answers"]["answer_start"])})
            for r in qa_rows(30, seed=3, longest=60)]
    split = task.encode(tokenizer, rows, [], 24)
    assert len(split) > 2 * len(rows) and split.truncated > 0  # contexts longer than a window were split
    assert all(len(f["input_ids"]) <= 24 for f in split.features)
    assert any(f["start_positions"] == 0 for f in split.features)  # windows without the answer point at [CLS]
    logits = {}
    for feature in split.features:
        start, end = np.zeros(24), np.zeros(24)
        if feature["start_positions"]:
            start[feature["start_positions"]], end[feature["end_positions"]] = 10.0, 10.0
        logits[feature["feature_id"]] = (start, end)
    returned_rows, answers = task.answers(logits)
    assert returned_rows is rows and answers == [row.answers[0] for row in rows]


def test_answer_start_must_point_at_the_answer(tmp_path):
    from peftstd.config import load_config
    from peftstd.data.sources import read_file
    from peftstd.errors import DataError

    cfg = load_config(None, ["task.type=question-answering"])
    bad = {"question": "which", "context": "the movie was dull", "answers": {"text": ["dull"], "answer_start": [3]}}
    with pytest.raises(DataError, match=r"answer 'dull' is not at character 3"):
        read_file(write_jsonl(tmp_path / "qa.jsonl", [bad]), cfg.data, [], "question-answering")


def qa_args(model, data, out, name, *extra):
    return [f"model.name={model}", f"data.source={data}", f"output.dir={out}", f"output.name={name}", "task.type=question-answering",
            "model.max_length=24", "task.doc_stride=8", "training.batch_size=16", "evaluation.batch_size=16", "training.precision=fp32", *extra]


@pytest.fixture(scope="module")
def qa_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("qa")
    data = write_jsonl(out / "qa.jsonl", qa_rows(320, longest=30))
    result = run_recipe(qa_args(tiny_model, data, out, "lora", "training.max_steps=60", "training.learning_rate=0.01",
                                "evaluation.every_steps=20"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "lora"


def test_qa_learns_to_find_the_answer(qa_run):
    metrics = json.loads((qa_run / "metrics.json").read_text())
    assert metrics["best"]["metric"] == "f1" and {"exact_match", "f1", "loss"} <= set(metrics["test"])
    assert metrics["test"]["exact_match"] > 0.5  # chance is about 1 in 20 words
    records = [json.loads(line) for line in (qa_run / "predictions" / "test.jsonl").read_text().splitlines()]
    assert len(records) == 32 and {"question", "context", "answers", "prediction", "f1"} <= set(records[0])
    assert all(r["prediction"] == "" or r["prediction"] in r["context"] for r in records)
    assert "Lowest-F1 predictions" in (qa_run / "report.md").read_text()


@pytest.mark.parametrize("method", ["full", "adalora", "adapter"])
def test_qa_trains_with_every_method_and_reloads(tiny_model, tmp_path, method):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(80, longest=30))
    extra = ["adalora.init_rank=4", "adalora.target_rank=2", "adalora.reallocation_interval=1"] if method == "adalora" else []
    result = run_recipe(qa_args(tiny_model, data, tmp_path, method, f"method={method}", "training.max_steps=6",
                                "evaluation.every_steps=3", *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"exact_match", "f1"} <= set(json.loads((tmp_path / method / "metrics.json").read_text())["test"])
    checked = peftstd("check", str(tmp_path / method))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_question_longer_than_the_window_is_a_one_line_error(tiny_model, tmp_path):
    long_question = {**qa_rows(1)[0], "question": " ".join(["which"] * 30)}
    data = write_jsonl(tmp_path / "qa.jsonl", [long_question] * 20)
    result = run_recipe(qa_args(tiny_model, data, tmp_path, "long"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "leaves no room for a context window" in result.stderr


def test_qa_export_passes_the_gate_and_loads_with_optimum(qa_run, tmp_path):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForQuestionAnswering
    from transformers import AutoTokenizer

    out = tmp_path / "export"
    result = peftstd("export", str(qa_run), "--int8", "--budget", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "export.json").read_text())
    assert report["gate"]["metric"] == "f1" and report["gate"]["artifacts"][0]["max_abs_logit_difference"] < 1e-4
    assert report["stages"]["merge"]["max_abs_logit_difference"] < 1e-4  # segment ids reach the LoRA model too
    tokenizer = AutoTokenizer.from_pretrained(out)
    encoded = tokenizer(["which word"], ["the plot was dull and the acting was boring"], return_tensors="np")
    bare = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    start, end = bare.run(["start_logits", "end_logits"], {k: v for k, v in encoded.items()})
    optimum = ORTModelForQuestionAnswering.from_pretrained(out, file_name="model.onnx")(**tokenizer(
        ["which word"], ["the plot was dull and the acting was boring"], return_tensors="pt"))
    assert np.allclose(optimum.start_logits.numpy(), start, atol=1e-5) and np.allclose(optimum.end_logits.numpy(), end, atol=1e-5)
    predicted = peftstd("predict", str(out), "which word", "--context", "the plot was dull and the acting was boring")
    assert predicted.returncode == 0 and predicted.stdout.split("\t")[0] in ("dull", "boring")
    missing = peftstd("predict", str(out), "which word")
    assert missing.returncode != 0 and "--context" in missing.stderr and "Traceback" not in missing.stderr


def test_eval_scores_questions_on_the_run_and_its_export(qa_run, tmp_path):
    from conftest import evaluated

    out = tmp_path / "export"
    assert peftstd("export", str(qa_run), "--out", str(out)).returncode == 0
    report = evaluated(qa_run, out, tmp_path / "eval")
    run, artifact = report["results"]
    trained = json.loads((qa_run / "metrics.json").read_text())["test"]
    test_questions = json.loads((qa_run / "manifest.json").read_text())["data"]["sizes"]["test"]
    assert run["headline"] == ["exact_match", "f1"] and run["examples"] == artifact["examples"] == test_questions  # questions, not windows
    assert abs(run["metrics"]["f1"] - trained["f1"]) < 1e-9 and abs(run["metrics"]["exact_match"] - trained["exact_match"]) < 1e-9
    assert artifact["metrics"] == run["metrics"] and report["comparison"]["f1"]["p_value"] == 1.0
