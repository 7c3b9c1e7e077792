"""`README.md` of a run: a Hugging Face model card (YAML front matter + method, results, use, reproduction)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from peftstd.data.registry import DATASETS
from peftstd.methods import METHODS
from peftstd.models.registry import MODELS


def hub_id_and_license(model_name: str) -> tuple[str, str]:
    """The Hub id and licence of a registered model; other names (hub ids, folders) stand for themselves."""
    return (MODELS[model_name].hub_id, MODELS[model_name].license) if model_name in MODELS else (model_name, "other")


def front_matter(name: str, cfg, manifest: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    from peftstd.tasks import get_task

    base, license_name = hub_id_and_license(cfg.model.name)
    dataset = cfg.data.source
    test = metrics["test"]
    task = get_task(cfg.task.type)
    shown, hub_task = task.card_metrics, task.hub_task or task.name
    return {
        "base_model": base,
        "library_name": METHODS[cfg.method].library,
        "license": license_name,
        "datasets": [dataset],
        "metrics": list(dict.fromkeys(kind for _, kind, _ in shown)),
        "pipeline_tag": hub_task,
        "tags": ["peftstd", cfg.task.type, cfg.method],
        "model-index": [{
            "name": name,
            "results": [{
                "task": {"type": hub_task, "name": hub_task.replace("-", " ").capitalize()},
                "dataset": {"name": dataset, "type": dataset, "split": "test"},
                "metrics": [{"type": kind, "value": round(test[key], 4), "name": title} for key, kind, title in shown],
            }],
        }],
    }


def render_card(name: str, cfg, manifest: dict[str, Any], metrics: dict[str, Any]) -> str:
    from peftstd.tasks import get_task

    task = get_task(cfg.task.type)
    meta = front_matter(name, cfg, manifest, metrics)
    section = cfg.method_section().model_dump()
    data_note = DATASETS[cfg.data.source].description if cfg.data.source in DATASETS else f"`{cfg.data.source}`"
    test = metrics["test"]
    hyper = {
        "method": cfg.method, **{f"{cfg.method}.{k}": v for k, v in section.items()},
        "learning rate": manifest["training"]["learning_rate"], "epochs": cfg.training.epochs,
        "batch size": f"{cfg.training.batch_size} x {manifest['training']['world_size']} process(es)",
        "scheduler": cfg.training.scheduler, "precision": manifest["training"]["precision"],
        "max length": cfg.model.max_length, "seed": cfg.training.seed,
    }
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in hyper.items())
    results = "\n".join(f"| {title} | {test[key]:.4f} |" for key, _, title in task.card_metrics)
    primary, primary_title = task.card_metrics[0][0], task.card_metrics[0][2]
    sizes = manifest["data"]["sizes"]
    labels = manifest["task"]["labels"]
    labels_note = f" Labels: {', '.join(labels)}." if labels else ""
    base_note = ""
    if "base_model" in metrics:  # generative tasks: the base model on the same held-out data
        base = metrics["base_model"]
        base_note = (f"\n\nThe base model on the same data: validation perplexity {base['validation']['perplexity']:.2f}, "
                     f"test BLEU {base['test_generation']['bleu']:.2f}, ROUGE-1 {base['test_generation']['rouge1']:.4f}, "
                     f"ROUGE-L {base['test_generation']['rougeL']:.4f} ({base['test_generation']['prompts']} prompts).")
    error_note = ""
    if 0 <= test[primary] <= 1:  # a proportion: its binomial standard error tells how much one split can say
        error_note = (f" (about ±{100 * (test[primary] * (1 - test[primary]) / max(sizes['test'], 1)) ** 0.5:.1f} points "
                      f"binomial standard error on {primary_title.lower()})")
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {name}

`{meta['base_model']}` fine-tuned for {cfg.task.type} with **{cfg.method}** by peftstd {manifest['peftstd_version']}
(recipe schema {manifest['schema_version']}). {manifest['parameters']['trainable']:,} of {manifest['parameters']['total']:,}
parameters were trained ({manifest['parameters']['trainable_percent']:.2f}%).

## Data

{data_note}. Splits: train {sizes['train']}, validation {sizes['validation']}, test {sizes['test']}
(sha256 of each in `manifest.json`).{labels_note}

## Results (test split, final model in float32)

| metric | value |
|---|---|
{results}

Best validation {metrics['best']['metric']} {metrics['best']['value']:.4f} at step {metrics['best']['step']}; details in `report.md`.{base_note}

## Hyperparameters

| setting | value |
|---|---|
{rows}

## Intended use and limitations

For {cfg.task.type} of text like the training data: {data_note.split(',')[0]}. It was evaluated on one
held-out split of {sizes['test']} examples{error_note}; expect lower scores on text from other domains, and check for the biases of
the base model and the data before use in decisions about people.

## How to reproduce

```
{manifest['command']}
```

Package versions, hardware and hashes are in `manifest.json`; the resolved config is `config.yaml`.
"""


def gate_row(record: dict[str, Any], sizes_mb: dict[str, float]) -> str:
    parity = f"{record['max_abs_logit_difference']:.1e}" if "max_abs_logit_difference" in record else "-"
    return (f"| `{record['file']}` | {record['artifact']} | {record['value']:.4f} | {record['drop_points']:+.2f} | {parity} | "
            f"{sizes_mb[record['file']]:.1f} | {'pass' if record['passed'] else 'FAIL'} |" if record.get("shipped", True) else
            "- | FAIL, not shipped |")


def loading_hint(task_name: str, kv_cache: bool = True) -> str:
    """How to load the export with stock libraries."""
    from peftstd.tasks import get_task

    task = get_task(task_name)
    if task.generative:
        options = "" if kv_cache else ", use_cache=False"
        return (f"`optimum.onnxruntime.{task.ort_model}.from_pretrained(folder{options})` (the int8 artifact: `folder/int8`), "
                "then `.generate(...)` as with transformers; each ONNX file also opens in a bare `onnxruntime.InferenceSession`.")
    return (f'`onnxruntime.InferenceSession("model.onnx")` with this folder\'s tokenizer, or\n'
            f'`optimum.onnxruntime.{task.ort_model}.from_pretrained(folder, file_name="model.onnx")`.')


def export_front_matter(run_card: str | None, library: str, tags: set[str]) -> str:
    """The run card's front matter for an export of it: its library and tags."""
    meta = yaml.safe_load(run_card.split("---\n")[1]) if run_card and run_card.startswith("---\n") else {}
    meta = {**meta, "library_name": library, "tags": sorted(set(meta.get("tags", [])) | tags)}
    return yaml.safe_dump(meta, sort_keys=False).strip()


def render_gguf_card(report: dict[str, Any], run_card: str | None) -> str:
    """`README.md` of a GGUF export: what llama.cpp measured of each file, and how to run them."""
    gate = report["gate"]
    rows = "\n".join(
        f"| `{r['file']}` | {r['artifact'].removeprefix('gguf-').upper()} | {r['value']:.4f} | {r['drop_points']:+.2f} | {r['budget_points']:g} | "
        f"{100 * r['tokenizer']['identical_share']:.0f}% | {100 * r['decoding']['identical_share']:.0f}% | "
        + (f"{report['sizes_mb'][r['file']]:.1f} | {'pass' if r['passed'] else 'FAIL'} |" if r.get("shipped", True) else "- | FAIL, not shipped |")
        for r in gate["artifacts"])
    shipped = [r["file"] for r in gate["artifacts"] if r.get("passed")]
    example = shipped[0] if shipped else "model-q8_0.gguf"
    types = "; ".join(f"`{file}`: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())
                      for file, counts in report["stages"]["gguf"]["tensor_types"].items())
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["timings_s"].items())
    return f"""---
{export_front_matter(run_card, "gguf", {"gguf", "llama.cpp", "peftstd-export"})}
---

# GGUF export of `{Path(report['source_run']).name}`

Export **{report['status']}**: each file was loaded in llama.cpp (llama-cpp-python {report['runtime']['llama_cpp_python']}), which
teacher-forced the source run's held-out test split ({gate['examples']} examples, {gate['artifacts'][0]['tokens']} scored tokens) against
the trained PyTorch model (perplexity {gate['trained_metric']:.4f}), tokenized every test conversation (it must match the run's
tokenizer) and decoded the first test prompts greedily (the share identical to PyTorch's tokens is recorded).

| file | type | test perplexity | rise (%) | budget (%) | tokenized identically | decoded identically | size MB | gate |
|---|---|---|---|---|---|---|---|---|
{rows}

Tensor types: {types}.
Made by {report['stages']['gguf']['converter']} and {report['stages']['gguf']['quantizer']}; merge: {report['stages']['merge']['how']}.
Stage times: {stages}.

Run it:
- llama.cpp: `llama-server -m {example}` (an OpenAI-compatible server; the chat template is in the file), or `llama-cli -m {example} -cnv`;
- Ollama: `ollama create NAME -f Modelfile && ollama run NAME` (the Modelfile here holds the chat template and stop tokens);
- peftstd: `peftstd predict FOLDER --artifact {gate['artifacts'][0]['artifact'] if not shipped else 'gguf-' + example.removeprefix('model-').removesuffix('.gguf')} "..."`.
Everything above is in `export.json`.
"""


def ranking_table(timings: list[dict]) -> list[str]:
    """Markdown rows of a measured ranking (export.json `choice`, runtime/choice.py), best first."""
    batches = list(timings[0]["samples_per_s"])
    lines = ["| artifact | runtime | " + " | ".join(f"rows/s at batch {b}" for b in batches) + " | score (geometric mean) |",
             "|---|---|" + "---|" * len(batches) + "---|"]
    return lines + [f"| {t['artifact']} | {t['runtime']} | " + " | ".join(f"{t['samples_per_s'][b]:.0f}" for b in batches)
                    + f" | {t['score']:.0f} |" for t in timings]


def render_export_card(report: dict[str, Any], run_card: str | None) -> str:
    """`README.md` of an export folder: the run's front matter plus what the export did and proved."""
    if report.get("runtime", {}).get("engine") == "llama.cpp":
        return render_gguf_card(report, run_card)
    gate = report["gate"]
    metric = gate.get("metric", "accuracy")
    change = "rise (%)" if metric == "perplexity" else "drop (points)"
    merge = report["stages"]["merge"]
    merge_line = merge["how"] + (f" (max logit difference {merge['max_abs_logit_difference']:.1e})" if "max_abs_logit_difference" in merge else "")
    decoding = "".join(f"Greedy decoding of {r['decoding']['prompts']} test prompts, {r['artifact']} against PyTorch: identical tokens for "
                       f"{100 * r['decoding']['identical_share']:.0f}% of prompts, max step-score difference {r['decoding']['max_abs_score_difference']:.1e}.\n"
                       for r in gate["artifacts"] if "decoding" in r)
    rows = "\n".join(gate_row(record, report["sizes_mb"]) for record in gate["artifacts"])
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["timings_s"].items())
    kept = {name: a["kept_in_float"] for name, a in report["stages"].get("quantize", {}).get("artifacts", {}).items() if "kept_in_float" in a}
    kept_line = f"MatMuls kept in float by the sensitivity pass: {kept}. " if kept else ""
    prune = report["stages"].get("prune")
    speed = report.get("speed")
    speed_table = ""
    if speed:
        batches = sorted({r["batch"] for r in speed["rows"]})
        names = list(dict.fromkeys(r["backend"] for r in speed["rows"]))
        cell = {(r["backend"], r["batch"]): r for r in speed["rows"]}
        lines = ["| backend | " + " | ".join(f"batch {b}: p50 ms (speed-up)" for b in batches) + " |", "|---" * (len(batches) + 1) + "|"]
        lines += ["| " + name + " | " + " | ".join(f"{cell[name, b]['p50_ms']:.1f} ({cell[name, b]['speedup_vs_pytorch_fp32']:.2f}x)" for b in batches) + " |"
                  for name in names]
        speed_table = (f"Speed on the exporting machine ({report.get('machine', {}).get('cpu', 'CPU')}, {speed['threads']} threads, "
                       f"sequence {speed['sequence']}, p50 of {speed['repeats']} interleaved calls, ONNX Runtime session settings "
                       f"{report.get('runtime', {})}):\n\n" + "\n".join(lines) + "\n\n")
    choice = report.get("choice")
    if choice:  # runtime/choice.py's ranking, best first
        lines = ranking_table(choice["timings"])
        speed_table += (f"What `peftstd serve` runs by default on this machine (`--artifact auto --runtime auto`) is the first row, as served "
                        f"(dynamic int8 one row per call), measured on {choice['machine']['cpu']} ({', '.join(choice['machine']['isa'])}); "
                        "on another CPU it is measured again:\n\n" + "\n".join(lines) + "\n\n")
    prune_line = (f"Structured pruning removed {100 * prune['flops_reduction']:.0f}% of encoder FLOPs "
                  f"({prune['parameters_before']:,} -> {prune['parameters_after']:,} parameters).\n\n") if prune else ""
    return f"""---
{export_front_matter(run_card, "onnx", {"onnx", "peftstd-export"})}
---

# ONNX export of `{Path(report['source_run']).name}`

Export **{report['status']}**: every artifact was run on the source run's held-out test split ({gate['examples']} examples)
against the trained PyTorch model ({metric} {gate['trained_metric']:.4f}); budget {gate['budget_points']} {gate.get('budget_unit', 'points')},
fp32 parity tolerance {gate['parity_tolerance']:.0e} max-abs logits.

| file | artifact | test {metric} | {change} | max abs logit difference | size MB | gate |
|---|---|---|---|---|---|---|
{rows}

{decoding}{speed_table}{prune_line}Merge: {merge_line}.
{kept_line}Stage times: {stages}.

Load it without peftstd: {loading_hint(report.get('task', 'text-classification'), report['stages'].get('onnx', {}).get('kv_cache', True))}
Run the artifacts with the session settings in `export.json` (`runtime`), as peftstd does; speed on your
machine, with percentiles over a batch and sequence grid: `peftstd bench` on this folder. Everything above is in `export.json`.
"""


def render_pretraining_card(name: str, cfg, manifest: dict[str, Any], metrics: dict[str, Any]) -> str:
    """`README.md` of a pretraining run: front matter with the held-out perplexity, then what was trained on what."""
    base, license_name = hub_id_and_license(cfg.model.name)
    start, best = metrics["start"], metrics["best"]
    meta = {
        "base_model": None if cfg.from_scratch else base,
        "library_name": "transformers",
        "license": "other" if cfg.from_scratch else license_name,
        "datasets": [cfg.data.source],
        "metrics": ["perplexity", "accuracy"],
        "pipeline_tag": "fill-mask" if cfg.objective == "masked-lm" else "text-generation",
        "tags": ["peftstd", "pretraining", cfg.objective],
        "model-index": [{"name": name, "results": [{
            "task": {"type": "fill-mask" if cfg.objective == "masked-lm" else "text-generation", "name": cfg.objective},
            "dataset": {"name": cfg.data.source, "type": cfg.data.source, "split": "validation"},
            "metrics": [{"type": "perplexity", "value": round(best["perplexity"], 4), "name": "Validation perplexity"},
                        {"type": "accuracy", "value": round(best["accuracy"], 4), "name": "Predicted-token accuracy"}],
        }]}],
    }
    meta = {k: v for k, v in meta.items() if v is not None}
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {name}

{cfg.objective} pretraining from {manifest['pretraining']['started_from']} by peftstd {manifest['peftstd_version']}
({manifest['training']['optimizer_steps']} optimizer steps, {manifest['parameters']['trainable']:,} trainable parameters,
{manifest['training']['precision']}). Corpus: `{cfg.data.source}`, train {manifest['data']['sizes']['train']} / validation
{manifest['data']['sizes']['validation']} texts; the test split is never read.

| validation ({start['tokens']:,} predicted tokens) | start | best (step {best['step']}) |
|---|---|---|
| perplexity | {start['perplexity']:.2f} | {best['perplexity']:.2f} |
| predicted-token accuracy | {start['accuracy']:.4f} | {best['accuracy']:.4f} |

`model/` is a plain transformers folder. Fine-tune from it by naming this run directory as `model.name`.

## How to reproduce

```
{manifest['command']}
```
"""
