"""Load a finished run directory back into a ready-to-predict model."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftstd.runtime.folders import RunFolder


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
