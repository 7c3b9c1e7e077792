"""The run's own data for export: held-out test split (verification), training sample (calibration)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftstd.errors import UserError


@dataclass
class TaskData:
    texts: list[str]
    pairs: list[str] | None
    label_ids: np.ndarray


def run_splits(run_dir, manifest):
    """The run's splits rebuilt from its config, refused unless their sha256 match the manifest."""
    from peftstd.config import load_config
    from peftstd.data import load_splits

    cfg = load_config(run_dir / "config.yaml")
    splits = load_splits(cfg.data, cfg.task.type)
    recorded = manifest["data"]["sha256"]
    for name, digest in splits.sha256().items():
        if recorded.get(name) != digest:
            raise UserError(f"the {name} split rebuilt from {run_dir}/config.yaml differs from the one the run recorded; its data changed")
    return cfg, splits


def task_data(rows, labels: list[str]) -> TaskData:
    index = {name: i for i, name in enumerate(labels)}
    pairs = [r.text_pair for r in rows] if rows and rows[0].text_pair is not None else None
    return TaskData([r.text for r in rows], pairs, np.array([index[r.label] for r in rows]))
