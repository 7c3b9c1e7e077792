"""`peftstd eval RUN|EXPORT`: the task's standard metrics on any data the schema can describe.

PyTorch runs and ONNX artifacts go through the same batching and metric code, so their numbers compare.
"""

from __future__ import annotations

import json
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
    from peftstd.export.inference import onnx_logits, onnx_session, torch_logits
    from peftstd.run.load import load_run

    if (target / "export.json").is_file():
        report = json.loads((target / "export.json").read_text())
        from transformers import AutoTokenizer

        from peftstd.export.predict import artifact_path

        file = artifact or "model.onnx"
        tokenizer, session = AutoTokenizer.from_pretrained(target), onnx_session(artifact_path(target, file))
        return Predictor(f"{target.name}/{file}", Path(report["source_run"]),
                         lambda data: onnx_logits(session, tokenizer, data, 32, report["max_length"]))
    if (target / "manifest.json").is_file():
        if artifact:
            raise UserError("--artifact applies to export folders only")
        loaded = load_run(target)
        max_length = json.loads((target / "manifest.json").read_text())["data"]["max_length"]
        return Predictor(target.name, target, lambda data: torch_logits(loaded.model, loaded.tokenizer, data, 32, max_length))
    raise UserError(f"{str(target)!r} is neither a finished run (manifest.json) nor an export folder (export.json)")


def evaluation_data(run_dir: Path, data_spec: str | None, split: str):
    """The labelled examples to score: a split of the run's own data, or every row of another source."""
    from peftstd.config import load_config
    from peftstd.data.sources import read_source
    from peftstd.export.heldout import run_splits, task_data
    from peftstd.tasks import get_task

    labels = json.loads((run_dir / "labels.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if manifest["task"]["type"] != "text-classification":
        raise UserError(f"peftstd eval supports text-classification runs so far; this run is {manifest['task']['type']}")
    if data_spec is None:
        cfg, splits = run_splits(run_dir, manifest)  # sha256-checked
        rows = dict(splits.items())[split]
        source = f"{cfg.data.source} [{split}]"
    else:
        cfg = load_config(run_dir / "config.yaml")
        bad: list[str] = []
        named = read_source(data_spec, cfg.data, bad, cfg.task.type)
        rows = named.get(split) or named["train"]
        if bad:
            raise UserError(f"{len(bad)} row(s) of {data_spec} have no text or label ({', '.join(bad[:3])})")
        source = data_spec
    unknown = sorted({r.label for r in rows} - set(labels))
    if unknown:
        raise UserError(f"labels {unknown} of {source} are not among the model's labels {labels}")
    return task_data(rows, labels), source, get_task(cfg.task.type, labels, cfg.task.model_dump())


def evaluate_target(target: Path, data_spec: str | None, split: str, artifact: str | None, resamples: int = 1000) -> dict:
    model = predictor(target, artifact)
    data, source, task = evaluation_data(model.run_dir, data_spec, split)
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
