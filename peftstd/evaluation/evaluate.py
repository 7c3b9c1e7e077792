"""`peftstd eval RUN|EXPORT`: the task's standard metrics, with 95% bootstrap intervals, on any data the schema can
describe; `--compare` adds a paired bootstrap test of two targets on the same examples.

Every task the recipes train: accuracy and macro F1 (classification), entity F1 (NER, seqeval), exact match and
F1 (QA, SQuAD), perplexity, BLEU and ROUGE (causal-LM and seq2seq). PyTorch runs and exported artifacts go through
the same batching and metric code, so their numbers compare. Intervals resample examples (sentences, questions,
prompts), the unit the data was drawn in, never tokens or context windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peftstd.errors import UserError

HEADLINES = {"text-classification": ("accuracy", "macro_f1"), "token-classification": ("f1", "precision", "recall"),
             "question-answering": ("exact_match", "f1"), "causal-lm": ("perplexity", "bleu", "rougeL"),
             "seq2seq": ("perplexity", "bleu", "rougeL")}
COLUMNS = {"text-classification": ("text_column", "label_column"), "token-classification": ("tokens_column", "tags_column"),
           "question-answering": ("question_column", "context_column", "answers_column"),
           "causal-lm": ("prompt_column", "response_column"), "seq2seq": ("prompt_column", "response_column")}


@dataclass
class Target:
    """What is evaluated: a name, the run it came from, and its model: `logits` of a `TaskData` for the
    discriminative tasks, a `generator` (PyTorch model or optimum ORTModel: forward logits and `generate`) for
    the generative ones."""

    name: str
    run_dir: Path
    tokenizer: object
    max_length: int
    logits: Callable | None = None
    generator: object | None = None


@dataclass
class Measure:
    """Metrics over `n` examples that can be recomputed on any resample of them (`of(indices)`), the ones to give
    intervals for, and what identifies the examples (gold labels or references), so a comparison can check
    that both targets saw the same."""

    n: int
    of: Callable[[np.ndarray], dict[str, float]]
    headline: tuple[str, ...]
    gold: np.ndarray
    point: dict[str, float] | None = None  # on all examples, when it is computed otherwise than `of`


def predictor(target: Path, artifact: str | None) -> Target:
    from transformers import AutoTokenizer

    from peftstd.runtime.engines import load_generative, open_engine, quiet
    from peftstd.runtime.folders import ExportFolder, RunFolder
    from peftstd.runtime.inference import engine_logits, torch_logits
    from peftstd.runtime.load import load_run
    from peftstd.tasks import get_task

    if ExportFolder.is_export(target):
        export = ExportFolder(target)
        record = export.artifact(artifact or "fp32")
        tokenizer = AutoTokenizer.from_pretrained(target)
        if record.runtime == "llama.cpp":
            raise UserError(f"{record.artifact} is a GGUF file: llama.cpp scored it on the test split at export (export.json); "
                            "peftstd eval runs runs and ONNX artifacts")
        path = export.artifact_path(record.artifact)
        name = target.name if record.file == "." else f"{target.name}/{record.file}"  # generative fp32: the folder itself
        if export.generative:
            with quiet():
                model = load_generative(path, get_task(export.task), export.kv_cache)
            return Target(name, export.source_run.path, tokenizer, export.max_length, generator=model)
        engine = open_engine(path, record.runtime, disabled_optimizers=export.disabled_optimizers)  # NNCF's IR: openvino
        return Target(name, export.source_run.path, tokenizer, export.max_length,
                      logits=lambda data: engine_logits(engine, tokenizer, data, 32, export.max_length))
    if artifact:
        raise UserError("--artifact applies to export folders only")
    run = RunFolder(target)
    loaded = load_run(target)
    if run.generative:
        return Target(target.name, target, loaded.tokenizer, run.max_length, generator=loaded.model)
    return Target(target.name, target, loaded.tokenizer, run.max_length,
                  logits=lambda data: torch_logits(loaded.model, loaded.tokenizer, data, 32, run.max_length))


def evaluation_rows(run_dir: Path, data_spec: str | None, split: str, overrides: list[str] = ()):
    """The examples to score, the source's name, the run's task and config: a split of the run's own data, or
    every row of another source, read with the run's column mapping unless `overrides` (dotted `data.*` keys,
    as the recipe takes them) change it."""
    from peftstd.config import load_config
    from peftstd.data.sources import read_source, source_columns
    from peftstd.runtime.folders import RunFolder
    from peftstd.runtime.taskdata import run_splits
    from peftstd.tasks import get_task

    run = RunFolder(run_dir)
    if run.task not in HEADLINES:
        raise UserError(f"peftstd eval covers {', '.join(HEADLINES)} runs; this run is {run.task}")
    not_data = [o for o in overrides if not o.startswith("data.")]
    if not_data:
        raise UserError(f"{not_data[0]!r}: eval takes data.* overrides only (e.g. data.text_column=sentence data.label_column=polarity)")
    if overrides and data_spec is None:
        raise UserError("data.* overrides apply to --data; without it the run's own split is read as the run read it")
    if data_spec is None:
        cfg, splits = run_splits(run_dir, run.raw_manifest)  # sha256-checked
        rows = dict(splits.items())[split]
        source = f"{cfg.data.source} [{split}]"
    else:
        cfg = load_config(run_dir / "config.yaml", list(overrides))
        bad: list[str] = []
        named = read_source(data_spec, cfg.data, bad, cfg.task.type)
        rows = named.get(split) or named["train"]
        if bad:
            keys = COLUMNS[run.task]
            wanted = " and ".join(f"{key.removesuffix('_column')} in column {getattr(cfg.data, key)!r}" for key in keys)
            columns = source_columns(data_spec)
            found = f"; its columns are {columns}" if columns else ""
            mapping = " ".join(f"data.{key}=NAME" for key in keys)
            raise UserError(f"{len(bad)} row(s) of {data_spec} lack {wanted} ({', '.join(bad[:3])}){found}; map them with {mapping}")
        source = data_spec
    if not rows:
        raise UserError(f"{source} has no examples to evaluate")
    labels = run.labels
    if run.task == "text-classification":
        unknown = sorted({r.label for r in rows} - set(labels))
    elif run.task == "token-classification":
        unknown = sorted({tag for r in rows for tag in r.tags} - set(labels))
    else:
        unknown = []
    if unknown:
        raise UserError(f"labels {unknown} of {source} are not among the model's labels {labels}")
    return rows, source, get_task(cfg.task.type, labels, cfg.task.model_dump()), cfg


def evaluation_data(run_dir: Path, data_spec: str | None, split: str, overrides: list[str] = ()):
    """Classification rows as a `TaskData` (what `ensemble` and `explain` score), their source and the task."""
    from peftstd.runtime.taskdata import task_data

    rows, source, task, _ = evaluation_rows(run_dir, data_spec, split, overrides)
    return task_data(rows, task.labels), source, task


def measures(target: Target, rows: list, task, cfg) -> list[Measure]:
    """What `target` scores on `rows`, per task."""
    from peftstd.runtime.taskdata import task_data

    if target.generator is not None:
        return [perplexity_measure(target, rows, task), generation_measure(target, rows, task, cfg)]
    data = task_data(rows, task.labels, target.tokenizer, target.max_length, task)
    logits = target.logits(data)
    if task.name == "question-answering":
        return [qa_measure(task, logits, data.label_ids)]
    return [logits_measure(task, logits, data.label_ids)]


def logits_measure(task, logits: np.ndarray, label_ids: np.ndarray) -> Measure:
    """Classification (one row per text) and NER (one row per sentence): the task's metrics on the resampled rows."""
    return Measure(len(label_ids), lambda idx: task.metrics(logits[idx], label_ids[idx]), HEADLINES[task.name], label_ids)


def qa_measure(task, logits: np.ndarray, feature_ids: np.ndarray) -> Measure:
    """Each question's best answer over all its windows, scored once; resamples average the questions' scores."""
    from peftstd.tasks.question_answering import best_scores

    rows, answers = task.stacked_answers(logits, feature_ids)
    scores = [best_scores(answer, row) for answer, row in zip(answers, rows)]
    exact, f1 = (np.array([s[key] for s in scores]) for key in ("exact_match", "f1"))
    gold = np.array(["\x1f".join(row.answers) for row in rows], dtype=object)
    return Measure(len(rows), lambda idx: {"exact_match": float(exact[idx].mean()), "f1": float(f1[idx].mean())},
                   HEADLINES[task.name], gold)


def perplexity_measure(target: Target, rows: list, task, batch_size: int = 16) -> Measure:
    """Teacher-forced negative log-likelihood of every response token, summed per example; perplexity of a
    resample is exp(its tokens' mean NLL), token-weighted as training reports it."""
    import torch

    from peftstd.runtime.engines import quiet
    from peftstd.runtime.inference import model_inputs
    from peftstd.tasks.base import IGNORE

    model, shift = target.generator, task.label_shift
    features = task.encode(target.tokenizer, rows, [], target.max_length).features
    collate = task.collator(target.tokenizer)
    nll, tokens = np.zeros(len(rows)), np.zeros(len(rows))
    with torch.inference_mode(), quiet():
        for start in range(0, len(features), batch_size):
            batch = collate(features[start : start + batch_size])
            logits = model(**model_inputs(model, batch)).logits.float()
            logits, labels = logits[:, : logits.shape[1] - shift], batch["labels"][:, shift:]
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
            nll[start : start + len(labels)] = losses.double().sum(1).numpy()
            tokens[start : start + len(labels)] = (labels != IGNORE).sum(1).numpy()

    def of(idx: np.ndarray) -> dict[str, float]:
        mean = nll[idx].sum() / max(tokens[idx].sum(), 1)
        return {"loss": float(mean), "perplexity": math.exp(min(mean, 50.0))}

    return Measure(len(rows), of, ("perplexity",), np.array([row.response for row in rows], dtype=object))


def generation_measure(target: Target, rows: list, task, cfg) -> Measure:
    """The first `generation.samples` prompts generated under the run's `generation:` settings; BLEU of a resample
    from its sentences' n-gram statistics (sacreBLEU's own paired bootstrap does the same), ROUGE as the mean of
    its sentences' F-measures. The point values are the run's (corpus BLEU, rouge-score's aggregate)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    from peftstd.runtime.engines import quiet

    shown = rows[: cfg.generation.samples or len(rows)]
    with quiet():
        predictions = task.generate(target.generator, target.tokenizer, shown, cfg.generation, target.max_length, cfg.training.seed)
    references = [row.response for row in shown]
    bleu = sacrebleu.BLEU()
    stats = np.array(bleu._extract_corpus_statistics(predictions, [references]))  # what sacrebleu.significance resamples
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    f = {key: np.array([r[key].fmeasure for r in rouge]) for key in ("rouge1", "rouge2", "rougeL")}

    def of(idx: np.ndarray) -> dict[str, float]:
        return {"bleu": float(bleu._compute_score_from_stats(stats[idx].sum(0).tolist()).score),
                **{key: float(values[idx].mean()) for key, values in f.items()}}

    point = {"prompts": len(shown), **task.generation_metrics(predictions, references)}
    return Measure(len(shown), of, ("bleu", "rougeL"), np.array(references, dtype=object), point)


def evaluate_target(target: Path, data_spec: str | None, split: str, artifact: str | None, resamples: int = 1000,
                    overrides: list[str] = ()) -> dict:
    model = predictor(target, artifact)
    rows, source, task, cfg = evaluation_rows(model.run_dir, data_spec, split, overrides)
    return {"target": str(target), **score(model.name, measures(model, rows, task, cfg), source, task.name, resamples)}


def score(name: str, measured: list[Measure], source: str, task: str, resamples: int) -> dict:
    """Metrics of each measure on all its examples, with 95% bootstrap intervals of the headline ones."""
    from peftstd.evaluation.bootstrap import intervals

    metrics, ci95 = {}, {}
    for measure in measured:
        metrics.update(measure.point or measure.of(np.arange(measure.n)))
        ci95.update(intervals(measure.of, measure.headline, measure.n, resamples))
    return {"evaluated": name, "task": task, "data": source, "examples": measured[0].n, "metrics": metrics,
            "headline": [m for measure in measured for m in measure.headline], "ci95": ci95, "resamples": resamples,
            "_measures": measured}


def compare_targets(first: dict, second: dict, resamples: int = 1000) -> dict:
    from peftstd.evaluation.bootstrap import paired_tests

    out = {}
    for a, b in zip(first["_measures"], second["_measures"]):
        if a.n != b.n or not np.array_equal(a.gold, b.gold):
            raise UserError("the two targets were evaluated on different examples; give both the same --data and --split")
        out.update(paired_tests(a.of, b.of, a.headline, a.n, resamples))
    return out


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def summary_line(result: dict) -> str:
    """`name: metric value [95% CI low-high], ... (n=N)`: what `peftstd eval` and `peftstd ensemble` print per target."""
    cells = ", ".join(f"{m} {result['metrics'][m]:.4f} [95% CI {result['ci95'][m][0]:.4f}-{result['ci95'][m][1]:.4f}]" for m in result["headline"])
    return f"{result['evaluated']}: {cells} (n={result['examples']})"


def markdown(results: list[dict], comparison: dict | None) -> str:
    headline = results[0]["headline"]
    lines = [f"# peftstd eval on {results[0]['data']} ({results[0]['examples']} examples)", "",
             "| target | " + " | ".join(f"{m} (95% CI)" for m in headline) + " |", "|---" * (len(headline) + 1) + "|"]
    for r in results:
        cells = [f"{r['metrics'][m]:.4f} [{r['ci95'][m][0]:.4f}, {r['ci95'][m][1]:.4f}]" for m in headline]
        lines.append(f"| {r['evaluated']} | " + " | ".join(cells) + " |")
    if comparison:
        lines += ["", f"Paired bootstrap, {results[1]['evaluated']} minus {results[0]['evaluated']}:", "",
                  "| metric | difference | 95% CI | p-value |", "|---|---|---|---|"]
        for m, c in comparison.items():
            lines.append(f"| {m} | {c['difference']:+.4f} | [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {c['p_value']:.3f} |")
    return "\n".join(lines) + "\n"
