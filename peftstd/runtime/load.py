"""Load a finished run directory back into a ready-to-predict model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftstd.errors import UserError


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    labels: list[str]
    manifest: dict[str, Any]


def load_run(run_dir: str | Path) -> LoadedRun:
    from transformers import AutoTokenizer

    from peftstd.methods import get_method
    from peftstd.tasks import get_task

    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{str(run_dir)!r} is not a finished run directory (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    labels = json.loads((run_dir / "labels.json").read_text())
    method = get_method(manifest["method"]["name"])
    task = get_task(manifest["task"]["type"], labels, manifest["task"].get("settings"))
    weights_dir = run_dir / method.weights_dir
    model = method.load(task, Path(manifest["base_model"]["path"]), weights_dir, labels)
    model.eval()
    return LoadedRun(model, AutoTokenizer.from_pretrained(weights_dir), labels, manifest)
