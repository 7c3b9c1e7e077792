"""`peftstd ensemble RUN... --out DIR`: average the members' class probabilities and evaluate the result
like a run (the task's metrics with bootstrap intervals), next to each member on the same examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import softmax

from peftstd.errors import UserError


def check_members(predictors: list, split: str, own_data: bool) -> list[str]:
    """The members' shared labels; they must share them, and (on their own data) the very same examples of `split`."""
    from peftstd.runtime.folders import RunFolder

    runs = [RunFolder(p.run_dir) for p in predictors]
    if any(run.task != "text-classification" for run in runs):
        raise UserError(f"an ensemble averages class probabilities of text-classification runs; got {sorted({run.task for run in runs})}")
    labels = runs[0].labels
    for member, run in zip(predictors[1:], runs[1:]):
        other = run.labels
        if other != labels:
            raise UserError(f"{member.name} predicts labels {other}, {predictors[0].name} predicts {labels}; members must share labels")
        if own_data:
            hashes = [r.manifest.data.sha256[split] for r in (runs[0], run)]
            if hashes[0] != hashes[1]:
                raise UserError(f"{member.name} was trained on another {split} split than {predictors[0].name}; give --data to evaluate both on the same examples")
    return labels


def ensemble(members: list[Path], data_spec: str | None, split: str, resamples: int = 1000) -> tuple[list[dict], list[str]]:
    """Results for each member and, last, for the ensemble (mean of the members' probabilities); the labels.
    Each result keeps its log-probabilities under `_logits` and the gold label ids under `_labels`."""
    from peftstd.evaluation.evaluate import evaluation_data, logits_measure, predictor, score

    if len(members) < 2:
        raise UserError(f"an ensemble needs at least 2 members, got {len(members)}")
    predictors = [predictor(Path(m), None) for m in members]
    labels = check_members(predictors, split, data_spec is None)
    data, source, task = evaluation_data(predictors[0].run_dir, data_spec, split)
    named = [(p.name, p.logits(data)) for p in predictors]
    probabilities = np.mean([softmax(logits, axis=-1) for _, logits in named], axis=0)
    named.append((f"ensemble of {len(predictors)}", np.log(probabilities)))
    return [{**score(name, [logits_measure(task, logits, data.label_ids)], source, task.name, resamples),
             "_logits": logits, "_labels": data.label_ids} for name, logits in named], labels
