"""Sequence-to-sequence fine-tuning on a tiny random T5 (no encoder-decoder weights are available offline)."""

from __future__ import annotations

import json
import random

import pytest
from conftest import FILLER, NEGATIVE, POSITIVE, peftstd, run_recipe, write_jsonl

from peftstd.data.examples import PromptExample
from peftstd.tasks.base import IGNORE
from peftstd.tasks.seq2seq import Seq2SeqLM


def source_target_rows(n: int, seed: int = 0) -> list[dict]:
    """Sources holding one sentiment word; the target names the word and its polarity."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        word = rng.choice(POSITIVE + NEGATIVE)
        source = " ".join([rng.choice(FILLER) for _ in range(rng.randint(2, 6))] + [word])
        rows.append({"prompt": source, "response": f"{word} {'great' if word in POSITIVE else 'awful'}"})
    return rows


def seq2seq_args(model, data, out, name, *extra):
    return [f"model.name={model}", f"data.source={data}", f"output.dir={out}", f"output.name={name}", "task.type=seq2seq",
            "evaluation.metric=loss", "model.max_length=32", "training.batch_size=16", "evaluation.batch_size=16",
            "training.precision=fp32", "generation.max_new_tokens=4", "generation.samples=16", *extra]


def test_source_feeds_the_encoder_and_the_whole_target_is_learned(tiny_t5):
    from transformers import AutoTokenizer

    tokenizer, task = AutoTokenizer.from_pretrained(tiny_t5), Seq2SeqLM()
    split = task.encode(tokenizer, [PromptExample("the movie was dull", "dull awful")], [], 32)
    feature = split.features[0]
    assert tokenizer.decode(feature["input_ids"], skip_special_tokens=True) == "the movie was dull"
    assert feature["labels"] == tokenizer("dull awful")["input_ids"] and feature["labels"][-1] == tokenizer.eos_token_id
    batch = task.collator(tokenizer)(task.encode(tokenizer, [PromptExample("the movie", "dull awful"), PromptExample("a", "fun")], [], 32).features)
    assert batch["labels"][1].tolist()[-1] == IGNORE  # the shorter target is padded with the ignored label
    assert task.encode(tokenizer, [PromptExample(" ".join(["film"] * 40), "fun")], [], 32).truncated == 1


@pytest.fixture(scope="module")
def seq2seq_run(tiny_t5, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq2seq")
    data = write_jsonl(out / "pairs.jsonl", source_target_rows(240))
    result = run_recipe(seq2seq_args(tiny_t5, data, out, "lora", "training.max_steps=40", "training.learning_rate=0.01",
                                     "evaluation.every_steps=20", "lora.rank=8"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "lora"


def test_seq2seq_learns_and_reports_generation_against_the_base(seq2seq_run):
    metrics = json.loads((seq2seq_run / "metrics.json").read_text())
    base = metrics["base_model"]
    assert min(r["perplexity"] for r in metrics["history"]["validation"]) < base["validation"]["perplexity"]
    assert {"perplexity", "bleu", "rouge1", "rouge2", "rougeL"} <= set(metrics["test"])
    assert metrics["test"]["rouge1"] > base["test_generation"]["rouge1"]  # it learned to answer with a polarity word
    first = json.loads((seq2seq_run / "predictions" / "test.jsonl").read_text().splitlines()[0])
    assert {"prompt", "reference", "generated_base model", "generated_fine-tuned"} <= set(first)
    assert "text2text-generation" in (seq2seq_run / "README.md").read_text()


@pytest.mark.parametrize("method", ["full", "adalora", "adapter"])
def test_seq2seq_trains_with_every_method_and_reloads(tiny_t5, tmp_path, method):
    data = write_jsonl(tmp_path / "pairs.jsonl", source_target_rows(80))
    extra = ["adalora.init_rank=4", "adalora.target_rank=2", "adalora.reallocation_interval=1"] if method == "adalora" else []
    result = run_recipe(seq2seq_args(tiny_t5, data, tmp_path, method, f"method={method}", "training.max_steps=6",
                                     "evaluation.every_steps=3", *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"perplexity", "bleu", "rougeL"} <= set(json.loads((tmp_path / method / "metrics.json").read_text())["test"])
    checked = peftstd("check", str(tmp_path / method))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_seq2seq_refuses_a_decoder_only_model_before_loading_it(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", source_target_rows(20))
    result = run_recipe(seq2seq_args(tiny_model, data, tmp_path, "bert"))
    assert result.returncode != 0 and not (tmp_path / "bert").exists()
    assert "needs an encoder-decoder model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("kv_cache", [True, False])
def test_seq2seq_exports_with_and_without_a_kv_cache_and_generates_like_pytorch(seq2seq_run, tmp_path, kv_cache):
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import AutoTokenizer

    from peftstd.export.merge import merge
    from peftstd.runtime.load import load_run

    out = tmp_path / "export"
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"kv_cache: {str(kv_cache).lower()}\nint8: true\n")
    result = peftstd("export", str(seq2seq_run), "--profile", str(profile), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "export.json").read_text())
    fp32, int8 = report["gate"]["artifacts"]
    assert report["stages"]["onnx"]["kv_cache"] is kv_cache and fp32["max_abs_logit_difference"] < 1e-4
    assert fp32["decoding"]["max_abs_score_difference"] < 1e-4 and fp32["decoding"]["identical_share"] == 1.0
    assert int8["file"] == "int8" and "perplexity" == report["gate"]["metric"]
    has_past = any("past_key_values" in i.name for p in out.glob("decoder*.onnx") for i in __import__("onnx").load(str(p)).graph.input)
    assert has_past is kv_cache

    artifact = ORTModelForSeq2SeqLM.from_pretrained(out, provider="CPUExecutionProvider", use_cache=kv_cache)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model, _ = merge(load_run(seq2seq_run).model)
    batch = tokenizer(["the movie was dull", "a really fun story"], return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.no_grad():
        expected = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(artifact.generate(**batch, max_new_tokens=4, do_sample=False), expected)
    assert peftstd("check", str(out)).returncode == 0
    if kv_cache:
        from conftest import assert_generative_eval

        assert_generative_eval(seq2seq_run, out, tmp_path / "eval")
