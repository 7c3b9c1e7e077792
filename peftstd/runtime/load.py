"""Load a finished run directory back into a ready-to-predict model."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftstd.errors import UserError
from peftstd.runtime.folders import RunFolder

SERVED_AS_ADAPTERS = ("causal-lm", "text-classification")  # tasks whose LoRA runs `peftstd serve` loads onto a shared base


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    labels: list[str]
    manifest: dict[str, Any]


@contextlib.contextmanager
def trained_head_follows():
    """transformers warns that a fresh head is 'newly initialized ... You should probably TRAIN this model' when the
    base model loads; for a finished run that is false (the trained head is loaded from the run right after), so
    that warning, and only transformers' warnings during the load, are silenced."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def load_run(run_dir: str | Path) -> LoadedRun:
    from transformers import AutoTokenizer

    from peftstd.methods import get_method
    from peftstd.tasks import get_task

    run = RunFolder(run_dir)
    manifest = run.raw_manifest
    method = get_method(run.manifest.method.name)
    task = get_task(run.task, run.labels, run.manifest.task.settings)
    weights_dir = run.path / method.weights_dir
    with trained_head_follows():
        model = method.load(task, Path(run.manifest.base_model.path), weights_dir, run.labels, run.manifest.base_model.quantization_section())
    model.eval()
    return LoadedRun(model, AutoTokenizer.from_pretrained(weights_dir), run.labels, manifest)


def adapter_of(run: RunFolder, task: str | None = None) -> Path:
    """A LoRA run's adapter folder, to serve the run as an adapter of its base (a `task` run, or any task that
    `peftstd serve` shares bases for); one line for a run that cannot share its base."""
    manifest, tasks = run.manifest, (task,) if task else SERVED_AS_ADAPTERS
    if run.task not in tasks:
        raise UserError(f"{str(run.path)!r} is a {run.task} run; runs served as adapters here must be {' or '.join(tasks)} "
                        "(serve its export instead)")
    if manifest.method.name != "lora":
        raise UserError(f"{str(run.path)!r} trained method {manifest.method.name}; only lora runs share a base as adapters "
                        "(serve its export instead)")
    if manifest.base_model.quantization:
        raise UserError(f"{str(run.path)!r} trained on a quantized base; serve its export (the gate judged it against that base)")
    return run.path / "adapter"
