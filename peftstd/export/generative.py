"""Export of causal-LM and seq2seq runs: merge, ONNX through optimum's exporter (the decoder with or without a
KV cache; seq2seq as encoder and decoder files), optional dynamic int8, and the gate on the run's held-out test
split, batched and padded as in training:

- teacher-forced logits of every artifact against PyTorch on every scored target token; fp32 must match to
  the profile's parity tolerance (1e-3 max-abs unless set);
- test perplexity of every artifact within `budget` percent of the trained model's;
- greedy decoding of the first `generation_samples` test prompts by the artifact (through its KV cache when it
  has one) and by PyTorch: fp32 must match the step scores to the same tolerance; agreement of the decoded
  tokens is recorded for every artifact.

optimum writes the files its `ORTModelForCausalLM` / `ORTModelForSeq2SeqLM` load, with their past-key-value
wiring, which the per-task export in `onnx_export.py` does not attempt. Its own validation only warns on a
mismatch, so it is off and the gate above decides.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
from pathlib import Path

import torch

from peftstd.runtime.engines import load_generative, quiet
from peftstd.runtime.inference import model_inputs, scored_logits
from peftstd.tasks.base import IGNORE

INT8_BLOCK = 32  # weights per int8 scale
OPTIMUM_TASKS = {("causal-lm", True): "text-generation-with-past", ("causal-lm", False): "text-generation",
                 ("seq2seq", True): "text2text-generation-with-past", ("seq2seq", False): "text2text-generation"}


def export_folder(model, tokenizer, folder: Path, task_name: str, kv_cache: bool) -> dict:
    """The ONNX files of `model` in `folder`, with its config, generation config and tokenizer. A copy is
    exported: the exporter's patches (e.g. `use_cache` on T5's encoder) would otherwise stay on the model."""
    import copy

    from optimum.exporters.onnx import onnx_export_from_model

    with contextlib.redirect_stdout(io.StringIO()):
        onnx_export_from_model(copy.deepcopy(model), folder, task=OPTIMUM_TASKS[task_name, kv_cache], do_validation=False)
    if (folder / "decoder_model_merged.onnx").is_file():  # the merged decoder serves both steps; ORTModelForSeq2SeqLM loads it
        for redundant in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
            (folder / redundant).unlink(missing_ok=True)
    tokenizer.save_pretrained(folder)
    return {"exporter": "optimum onnx_export_from_model", "optimum_task": OPTIMUM_TASKS[task_name, kv_cache],
            "kv_cache": kv_cache, "files": sorted(p.name for p in folder.glob("*.onnx"))}


def quantize_folder(source: Path, folder: Path) -> dict:
    """Weight-only int8 of every ONNX file of `source` into `folder`, beside copies of its other files.

    ONNX Runtime's MatMulNBits: int8 weights in blocks of 32 with their own scales; activations stay float
    and are quantized per block at run time (accuracy level 4, the int8 kernels). Dynamic int8 of every
    MatMul (one activation scale per tensor) raised SmolLM2's test perplexity by 78% (8.35 -> 14.84), the
    outlier-heavy down projections alone by 9%; this scheme rose it by 0.5% (bench/results/export_smollm2.md).
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    folder.mkdir()
    for path in source.iterdir():
        if path.suffix == ".onnx":
            quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), bits=8, block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4)
            quantizer.process()
            quantizer.model.save_model_to_file(str(folder / path.name), use_external_data_format=False)
        elif path.is_file():
            shutil.copy(path, folder / path.name)
    return {"file": "int8", "scheme": f"weight-only int8 (MatMulNBits, blocks of {INT8_BLOCK}, symmetric, accuracy level 4)"}


@torch.no_grad()
def teacher_forced(model, artifacts: dict, loader, label_shift: int) -> dict[str, dict]:
    """Per artifact: the max-abs difference of its logits from `model`'s on every scored position, and its
    token-weighted perplexity; under "trained", `model`'s own perplexity. `model` runs once per batch, for
    all artifacts together."""
    difference, nll, tokens = dict.fromkeys(artifacts, 0.0), dict.fromkeys(["trained", *artifacts], 0.0), 0
    for batch in loader:
        inputs = model_inputs(model, batch)
        labels = batch["labels"][:, label_shift:]
        scored = labels != IGNORE
        reference = scored_logits(model, inputs, scored, label_shift)
        nll["trained"] += float(torch.nn.functional.cross_entropy(reference, labels[scored], reduction="sum"))
        for name, artifact in artifacts.items():
            logits = scored_logits(artifact, inputs, scored, label_shift)
            nll[name] += float(torch.nn.functional.cross_entropy(logits, labels[scored], reduction="sum"))
            difference[name] = max(difference[name], float((logits - reference).abs().max()) if len(logits) else 0.0)
        tokens += int(scored.sum())
    perplexity = {who: math.exp(min(total / max(tokens, 1), 50.0)) for who, total in nll.items()}
    return {"trained": {"perplexity": perplexity["trained"], "tokens": tokens},
            **{name: {"max_abs_logit_difference": difference[name], "perplexity": perplexity[name], "tokens": tokens} for name in artifacts}}


@torch.no_grad()
def greedy_agreement(task, model, artifacts: dict, tokenizer, rows, max_new_tokens: int, max_length: int) -> dict[str, dict]:
    """`model` and each artifact decode the prompts greedily (`model` once per batch): per artifact, the
    largest step-score difference while its tokens agree with `model`'s (after a first disagreement the two
    continue from different prefixes), and the share of prompts whose decoded tokens are identical."""
    settings = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1, "output_scores": True,
                "return_dict_in_generate": True, "pad_token_id": tokenizer.pad_token_id}
    difference, identical = dict.fromkeys(artifacts, 0.0), dict.fromkeys(artifacts, 0)
    for batch in task.prompt_batches(tokenizer, rows, 16, max_length):
        reference = model.generate(**batch, **settings)
        reference_tokens = task.new_tokens(model, reference.sequences, batch)
        for name, artifact in artifacts.items():
            output = artifact.generate(**batch, **settings)
            tokens = task.new_tokens(model, output.sequences, batch)
            agree = torch.ones(len(batch["input_ids"]), dtype=torch.bool)
            for step in range(min(reference_tokens.shape[1], tokens.shape[1])):
                if agree.any():
                    difference[name] = max(difference[name], float((reference.scores[step][agree] - output.scores[step][agree]).abs().max()))
                agree &= reference_tokens[:, step] == tokens[:, step]
            identical[name] += int(agree.sum()) if tokens.shape == reference_tokens.shape else 0
    return {name: {"prompts": len(rows), "max_abs_score_difference": difference[name], "identical_share": identical[name] / max(len(rows), 1)}
            for name in artifacts}


def worst_layer(folder: Path, model) -> dict | None:
    """The exported weight farthest from its PyTorch parameter, over every ONNX file of the artifact."""
    from peftstd.export.verify import worst_initializer

    found = [w for w in (worst_initializer(path, model) for path in sorted(folder.glob("*.onnx"))) if w]
    return max(found, key=lambda w: w["max_abs_difference"], default=None)


def export_generative(loaded, cfg, splits, task, profile, stages, report: dict, folder: Path) -> bool:
    """Every stage for a causal-LM or seq2seq run into `folder`; True when the gate passed."""
    with quiet():
        return run_stages(loaded, cfg, splits, task, profile, stages, report, folder)


def run_stages(loaded, cfg, splits, task, profile, stages, report: dict, folder: Path) -> bool:
    from peftstd.export.merge import merge
    from peftstd.training.batching import eval_loader

    tokenizer, max_length = loaded.tokenizer, cfg.model.max_length
    quantized = bool(loaded.manifest["base_model"].get("quantization"))
    with stages.stage("merge"):
        exported, how = merge(loaded.model, task.load_model(loaded.manifest["base_model"]["path"], []) if quantized else None)
        report["stages"]["merge"] = {"how": how}
    test_loader, _ = eval_loader(task.encode(tokenizer, splits.test, [], max_length), task.collator(tokenizer), profile.batch_size)
    run_model = None  # the run's own model, scored where merging changed it
    if exported is not loaded.model:
        run_model = teacher_forced(loaded.model, {"merged": exported}, test_loader, task.label_shift)
        report["stages"]["merge"]["max_abs_logit_difference"] = run_model["merged"]["max_abs_logit_difference"]

    with stages.stage("onnx"):
        report["stages"]["onnx"] = export_folder(exported, tokenizer, folder, task.name, profile.kv_cache)
    report["runtime"] = {"disabled_optimizers": []}
    artifacts = {"fp32": folder}
    if profile.int8:
        with stages.stage("quantize"):
            artifacts["int8-weights"] = folder / "int8"
            report["stages"]["quantize"] = {"artifacts": {"int8-weights": quantize_folder(folder, folder / "int8")}}

    with stages.stage("verify"):
        loaded_artifacts = {name: load_generative(path, task, profile.kv_cache) for name, path in artifacts.items()}
        scores = teacher_forced(exported, loaded_artifacts, test_loader, task.label_shift)
        decoding = greedy_agreement(task, exported, loaded_artifacts, tokenizer, splits.test[: profile.generation_samples],
                                    cfg.generation.max_new_tokens, max_length)
        # parity is judged against the merged model the graph came from; the metric budget against the model the run
        # trained, which for a quantized base (QLoRA) is the quantized model itself
        trained = run_model["trained"]["perplexity"] if quantized else scores["trained"]["perplexity"]
        gate = []
        for name, path in artifacts.items():
            rise = 100.0 * (scores[name]["perplexity"] / trained - 1)
            record = {"artifact": name, "file": path.relative_to(folder).as_posix(), "metric": "perplexity",
                      "value": scores[name]["perplexity"], "drop_points": rise, "metric_passed": rise <= profile.budget,
                      "tokens": scores[name]["tokens"], "decoding": decoding[name]}
            if name == "fp32":
                difference = scores[name]["max_abs_logit_difference"]
                record["max_abs_logit_difference"] = difference
                record["parity_passed"] = max(difference, decoding[name]["max_abs_score_difference"]) <= profile.parity_for(generative=True)
                if not record["parity_passed"]:
                    record["worst_layer"] = worst_layer(path, exported)
            record["passed"] = record["metric_passed"] and record.get("parity_passed", True)
            gate.append(record)
        report["gate"] = {"split": "test", "examples": len(splits.test), "metric": "perplexity", "trained_metric": trained,
                          "budget_points": profile.budget, "budget_unit": "percent rise of perplexity",
                          "parity_tolerance": profile.parity_for(generative=True), "artifacts": gate}
    report["sizes_mb"] = {record["file"]: sum(p.stat().st_size for p in artifacts[record["artifact"]].glob("*.onnx*")) / 2**20
                          for record in gate}
    return all(r["passed"] for r in gate)


def folder_ops(folder: Path) -> dict[str, dict[str, int]]:
    from peftstd.export.onnx_export import op_histogram

    return {p.relative_to(folder).as_posix(): op_histogram(p) for p in sorted(folder.rglob("*.onnx"))}

