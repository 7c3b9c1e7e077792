"""`peftstd eval RUN|EXPORT`: the task's standard metrics on any data the schema can describe.

PyTorch runs and ONNX artifacts go through the same batching and metric code, so their numbers compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peftstd.errors import UserError

HEADLINE = ("accuracy", "macro_f1")


@dataclass
class Predictor:
    """What is evaluated: a name, and logits for a `TaskData`."""

    name: str
    run_dir: Path
    logits: object  # Callable[[TaskData], np.ndarray]


def predictor(target: Path, artifact: str | None) -> Predictor:
    from peftstd.runtime.engines import open_engine
    from peftstd.runtime.folders import ExportFolder, RunFolder
    from peftstd.runtime.inference import engine_logits, torch_logits
    from peftstd.runtime.load import load_run

    if ExportFolder.is_export(target):
        from transformers import AutoTokenizer

        export = ExportFolder(target)
        record = export.artifact(artifact or "fp32")
        engine = open_engine(export.artifact_path(record.artifact), disabled_optimizers=export.disabled_optimizers)
        tokenizer = AutoTokenizer.from_pretrained(target)
        return Predictor(f"{target.name}/{record.file}", export.source_run.path,
                         lambda data: engine_logits(engine, tokenizer, data, 32, export.max_length))
    if artifact:
        raise UserError("--artifact applies to export folders only")
    run = RunFolder(target)
    loaded = load_run(target)
    return Predictor(target.name, target, lambda data: torch_logits(loaded.model, loaded.tokenizer, data, 32, run.max_length))


def evaluation_data(run_dir: Path, data_spec: str | None, split: str, overrides: list[str] = ()):
    """The labelled examples to score: a split of the run's own data, or every row of another source, read with
    the run's column mapping unless `overrides` (dotted `data.*` keys, as the recipe takes them) change it."""
    from peftstd.config import load_config
    from peftstd.data.sources import read_source, source_columns
    from peftstd.runtime.folders import RunFolder
    from peftstd.runtime.taskdata import run_splits, task_data
    from peftstd.tasks import get_task

    run = RunFolder(run_dir)
    labels = run.labels
    if run.task != "text-classification":
        raise UserError(f"peftstd eval supports text-classification runs so far; this run is {run.task}")
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
            columns = source_columns(data_spec)
            found = f"; its columns are {columns}" if columns else ""
            raise UserError(f"{len(bad)} row(s) of {data_spec} have no text in column {cfg.data.text_column!r} or no label in column "
                            f"{cfg.data.label_column!r} ({', '.join(bad[:3])}){found}; map them with data.text_column=NAME "
                            "data.label_column=NAME")
        source = data_spec
    unknown = sorted({r.label for r in rows} - set(labels))
    if unknown:
        raise UserError(f"labels {unknown} of {source} are not among the model's labels {labels}")
    return task_data(rows, labels), source, get_task(cfg.task.type, labels, cfg.task.model_dump())


def evaluate_target(target: Path, data_spec: str | None, split: str, artifact: str | None, resamples: int = 1000,
                    overrides: list[str] = ()) -> dict:
    model = predictor(target, artifact)
    data, source, task = evaluation_data(model.run_dir, data_spec, split, overrides)
    return {"target": str(target), **score(model.name, model.logits(data), data, source, task, resamples)}


def score(name: str, logits: np.ndarray, data, source: str, task, resamples: int) -> dict:
    """Metrics of `logits` on `data`, with 95% bootstrap intervals of the headline metrics."""
    from peftstd.evaluation.bootstrap import interval

    metrics = task.metrics(logits, data.label_ids)
    intervals = {metric: interval(lambda idx, metric=metric: task.metrics(logits[idx], data.label_ids[idx])[metric], len(data.texts), resamples)
                 for metric in HEADLINE}
    return {"evaluated": name, "data": source, "examples": len(data.texts), "metrics": metrics,
            "ci95": intervals, "resamples": resamples, "_logits": logits, "_labels": data.label_ids, "_task": task}


def compare_targets(first: dict, second: dict, resamples: int = 1000) -> dict:
    from peftstd.evaluation.bootstrap import paired_test

    if not np.array_equal(first["_labels"], second["_labels"]):
        raise UserError("the two targets were evaluated on different examples; give both the same --data and --split")
    task = first["_task"]
    out = {}
    for name in HEADLINE:
        out[name] = paired_test(lambda idx, name=name: task.metrics(first["_logits"][idx], first["_labels"][idx])[name],
                                lambda idx, name=name: task.metrics(second["_logits"][idx], second["_labels"][idx])[name],
                                len(first["_labels"]), resamples)
    return out


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def summary_line(result: dict) -> str:
    """`name: metric value [95% CI low-high], ... (n=N)`: what `peftstd eval` and `peftstd ensemble` print per target."""
    intervals = ", ".join(f"{m} {result['metrics'][m]:.4f} [95% CI {result['ci95'][m][0]:.4f}-{result['ci95'][m][1]:.4f}]" for m in HEADLINE)
    return f"{result['evaluated']}: {intervals} (n={result['examples']})"


def markdown(results: list[dict], comparison: dict | None) -> str:
    lines = [f"# peftstd eval on {results[0]['data']} ({results[0]['examples']} examples)", "",
             "| target | " + " | ".join(f"{m} (95% CI)" for m in HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for r in results:
        cells = [f"{r['metrics'][m]:.4f} [{r['ci95'][m][0]:.4f}, {r['ci95'][m][1]:.4f}]" for m in HEADLINE]
        lines.append(f"| {r['evaluated']} | " + " | ".join(cells) + " |")
    if comparison:
        lines += ["", f"Paired bootstrap, {results[1]['evaluated']} minus {results[0]['evaluated']}:", "",
                  "| metric | difference | 95% CI | p-value |", "|---|---|---|---|"]
        for m, c in comparison.items():
            lines.append(f"| {m} | {c['difference']:+.4f} | [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {c['p_value']:.3f} |")
    return "\n".join(lines) + "\n"
