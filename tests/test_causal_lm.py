"""Causal-LM supervised fine-tuning: response-only loss, packing, generation metrics, a recipe run, SmolLM2 from GGUF."""

from __future__ import annotations

import json
import random

import pytest
from conftest import FILLER, NEGATIVE, POSITIVE, run_recipe, write_jsonl

from peftstd.data.examples import PromptExample
from peftstd.tasks.base import IGNORE
from peftstd.tasks.causal_lm import CausalLM, example_ids, pack


def qa_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompts holding one sentiment word; the response repeats it and says its polarity."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        word = rng.choice(POSITIVE + NEGATIVE)
        prompt = " ".join([rng.choice(FILLER) for _ in range(rng.randint(2, 6))] + [word])
        rows.append({"prompt": prompt, "response": f"{word} {'great' if word in POSITIVE else 'awful'}"})
    return rows


def test_only_response_tokens_carry_labels(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    row = PromptExample("the movie was", "great fun")
    ids, prompt_length = example_ids(tokenizer, row)
    feature = CausalLM().encode(tokenizer, [row], [], 64).features[0]
    assert feature["labels"][:prompt_length] == [IGNORE] * prompt_length
    assert feature["labels"][prompt_length:] == ids[prompt_length:]
    assert tokenizer.decode(ids[prompt_length:]).split()[:2] == ["great", "fun"]
    assert tokenizer.decode(ids[:prompt_length]).split()[-1] == "assistant"  # the template's generation prompt
    plain = AutoTokenizer.from_pretrained(tiny_llama)
    plain.chat_template = None
    ids, prompt_length = example_ids(plain, row)
    assert ids[-1] == plain.eos_token_id and plain.decode(ids[prompt_length:-1]) == "great fun"


def test_packing_fills_sequences_and_keeps_every_token():
    features = [{"input_ids": [1] * n, "attention_mask": [1] * n, "labels": [IGNORE] * (n - 1) + [5]} for n in (5, 7, 3, 9, 2)]
    packed = pack(features, 12)
    assert [len(p["input_ids"]) for p in packed] == [12, 12, 2]
    assert sum(p["labels"].count(5) for p in packed) == 5


def test_generation_metrics_are_corpus_level():
    same = CausalLM.generation_metrics(["the cat sat on the mat", "a dog barked"], ["the cat sat on the mat", "a dog barked"])
    assert same["bleu"] == pytest.approx(100.0) and same["rouge1"] == pytest.approx(1.0) and same["rougeL"] == pytest.approx(1.0)
    other = CausalLM.generation_metrics(["completely different words here", "nothing"], ["the cat sat on the mat", "a dog barked"])
    assert other["bleu"] < 5 and other["rouge1"] < 0.2


def test_chat_format_rows_keep_their_history(tmp_path):
    from peftstd.config import load_config
    from peftstd.data.sources import read_file

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}]}]
    cfg = load_config(None, ["task.type=causal-lm", "evaluation.metric=loss"])
    [example] = read_file(write_jsonl(tmp_path / "chat.jsonl", rows), cfg.data, [], "causal-lm")
    assert (example.prompt, example.response) == ("how are you", "fine")
    assert example.messages()[:2] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture(scope="module")
def sft_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    data = write_jsonl(out / "qa.jsonl", qa_rows(240))
    result = run_recipe([f"model.name={tiny_llama}", f"data.source={data}", f"output.dir={out}", "output.name=sft",
                         "task.type=causal-lm", "evaluation.metric=loss", "model.max_length=32", "training.batch_size=16",
                         "evaluation.batch_size=16", "training.precision=fp32", "training.max_steps=40", "training.learning_rate=0.01",
                         "evaluation.every_steps=20", "generation.max_new_tokens=4", "generation.samples=16", "lora.rank=8"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "sft"


def test_sft_lowers_validation_perplexity_and_reports_generation_against_the_base(sft_run):
    metrics = json.loads((sft_run / "metrics.json").read_text())
    base = metrics["base_model"]
    assert metrics["best"]["metric"] == "loss"
    best_perplexity = min(r["perplexity"] for r in metrics["history"]["validation"])
    assert best_perplexity < base["validation"]["perplexity"]
    for key in ("perplexity", "bleu", "rouge1", "rouge2", "rougeL"):
        assert key in metrics["test"]
    assert {"bleu", "rouge1", "rougeL", "prompts"} <= set(base["test_generation"]) and base["test_generation"]["prompts"] == 16
    assert metrics["test"]["rouge1"] > base["test_generation"]["rouge1"]  # it learned to answer with the sentiment word
    report = (sft_run / "report.md").read_text()
    assert "Sample generations" in report and "| base model |" in report and "| fine-tuned |" in report
    first = json.loads((sft_run / "predictions" / "test.jsonl").read_text().splitlines()[0])
    assert {"prompt", "reference", "generated_base model", "generated_fine-tuned"} <= set(first)
    assert "Corpus BLEU" in (sft_run / "README.md").read_text()


@pytest.mark.integration
def test_smollm2_converts_once_from_gguf_and_answers(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftstd.models import resolve_model
    from peftstd.models.gguf import conversion_record

    monkeypatch.setenv("PEFTSTD_CACHE", str(tmp_path))
    resolved = resolve_model("smollm2")
    record = conversion_record(resolved.path)
    assert record["format"] == "gguf" and len(record["source_sha256"]) == 64
    assert resolve_model("smollm2").path == resolved.path  # cached: converted once
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    model = AutoModelForCausalLM.from_pretrained(resolved.path).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, prompt.shape[1]:], skip_special_tokens=True)


def test_label_smoothing_uses_the_shifted_positions(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer, task = AutoTokenizer.from_pretrained(tiny_llama), CausalLM()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    batch = task.collator(tokenizer)(task.encode(tokenizer, [PromptExample("the movie was", "great fun")], [], 32).features)
    assert torch.allclose(task.loss(model, batch, 0.0), model(**batch).loss)
    smoothed = task.loss(model, batch, 1e-6)
    assert torch.allclose(smoothed, model(**batch).loss, atol=1e-4)  # a vanishing smoothing is the plain shifted loss
    assert not torch.allclose(task.loss(model, batch, 0.3), model(**batch).loss)


def test_check_verifies_an_sft_run(sft_run):
    from conftest import peftstd

    result = peftstd("check", str(sft_run))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "adapter/ loads with stock libraries: peft" in result.stdout


@pytest.mark.parametrize("method", ["full", "adalora", "adapter", "qlora"])
def test_sft_trains_with_other_methods_and_reloads(tiny_llama, tmp_path, method):
    """qlora: LoRA on a 4-bit base of a model whose LM head is tied to its embeddings (transformers keeps it in float)."""
    from conftest import peftstd

    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(80))
    extra = {"adalora": ["adalora.init_rank=4", "adalora.target_rank=2", "adalora.reallocation_interval=1"],
             "qlora": ["model.quantization.bits=4"]}.get(method, [])
    result = run_recipe([f"model.name={tiny_llama}", f"data.source={data}", f"output.dir={tmp_path}", f"output.name={method}",
                         "task.type=causal-lm", "evaluation.metric=loss", f"method={'lora' if method == 'qlora' else method}", "model.max_length=32",
                         "training.batch_size=16", "training.precision=fp32", "training.max_steps=6", "evaluation.every_steps=3",
                         "generation.max_new_tokens=3", "generation.samples=4", *extra])
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"perplexity", "bleu", "rougeL"} <= set(json.loads((tmp_path / method / "metrics.json").read_text())["test"])
    checked = peftstd("check", str(tmp_path / method))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_sft_run_exports_with_a_kv_cache_and_passes_the_gate(sft_run, tmp_path):
    import torch
    from conftest import peftstd
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    from peftstd.export.merge import merge
    from peftstd.runtime.load import load_run

    out = tmp_path / "export"
    result = peftstd("export", str(sft_run), "--int8", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "export.json").read_text())
    fp32, int8 = report["gate"]["artifacts"]
    assert fp32["passed"] and int8["passed"] and fp32["max_abs_logit_difference"] < 1e-4
    assert fp32["decoding"]["prompts"] == 16 and fp32["decoding"]["max_abs_score_difference"] < 1e-4
    assert report["stages"]["onnx"]["optimum_task"] == "text-generation-with-past"
    artifact = ORTModelForCausalLM.from_pretrained(out / "int8", provider="CPUExecutionProvider")
    assert artifact.can_use_cache
    tokenizer = AutoTokenizer.from_pretrained(out)
    model, _ = merge(load_run(sft_run).model)
    ids = tokenizer(["the movie was"], return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        difference = (model(**ids).logits - artifact(**ids).logits).abs().max()
    assert difference < 0.5  # int8 stays close; the gate holds its perplexity within the budget
    assert peftstd("check", str(out)).returncode == 0
    predicted = peftstd("predict", str(out), "the movie was dull", "--artifact", "int8")
    assert predicted.returncode == 0 and predicted.stdout.endswith("\tthe movie was dull\n"), predicted.stderr
    from conftest import assert_generative_eval

    assert_generative_eval(sft_run, out, tmp_path / "eval")


def test_a_broken_generative_artifact_fails_the_gate(sft_run, tmp_path, monkeypatch):
    """A weight perturbed between export and verification must fail parity and exit non-zero."""
    import onnx
    from onnx import numpy_helper

    from peftstd.export import generative
    from peftstd.export.pipeline import export_run
    from peftstd.export.profile import ExportProfile

    original = generative.export_folder

    def export_then_break(*args, **kwargs):
        record = original(*args, **kwargs)
        path = args[2] / "model.onnx"
        model = onnx.load(str(path))
        weight = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.05, weight.name))
        onnx.save(model, str(path))
        return record

    monkeypatch.setattr(generative, "export_folder", export_then_break)
    code = export_run(sft_run, tmp_path / "broken", ExportProfile(speed_check=False))
    report = json.loads((tmp_path / "broken" / "export.json").read_text())
    assert code != 0 and report["status"] == "failed" and not report["gate"]["artifacts"][0]["parity_passed"]
    worst = report["gate"]["artifacts"][0]["worst_layer"]
    assert worst["max_abs_difference"] > 1e-3 and worst["layer"].endswith("weight")


def test_sft_run_exports_logits_without_a_kv_cache(sft_run, tmp_path):
    import onnx
    from conftest import peftstd

    profile = tmp_path / "no-cache.yaml"
    profile.write_text("kv_cache: false\n")
    result = peftstd("export", str(sft_run), "--profile", str(profile), "--out", str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = [i.name for i in onnx.load(str(tmp_path / "export" / "model.onnx")).graph.input]
    assert "input_ids" in inputs and not any("past_key_values" in name for name in inputs)
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    assert report["stages"]["onnx"]["optimum_task"] == "text-generation" and report["status"] == "passed"
    bench = peftstd("bench", str(tmp_path / "export"))  # generation has its own benchmark script
    assert bench.returncode != 0 and "bench/generate_speed.py" in bench.stderr and "Traceback" not in bench.stderr
