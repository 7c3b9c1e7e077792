"""The run directory contract: `runs/<name>/` with config, manifest, metrics, weights, report.

    config.yaml        fully resolved recipe (every default written out)
    manifest.json      provenance: versions, command, seed, hardware, data and weight hashes, timings
    metrics.json       validation history, best checkpoint, final test metrics
    adapter/ | model/  trained weights in the method's stock format, tokenizer, labels
    labels.json        label names in index order
    predictions/test.jsonl   test predictions and logits of the final model (float32)
    checkpoints/       periodic training states and the best weights
    tensorboard/       TensorBoard event files
    report.md, curves.png
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from peftstd.errors import ConfigError

LATEST = "latest"


def run_name(configured: str | None, config_path: str | None) -> str:
    stem = Path(config_path).stem if config_path else "default"
    return configured or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def resume_arguments(run_dir: str, overrides: list[str]) -> tuple[str, list[str]]:
    """(config path, overrides) that continue the unfinished run in `run_dir`: its own resolved config, pointed
    back at the run directory (`--resume RUN_DIR` of both recipes)."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"--resume: {str(run)!r} is not a run directory (no config.yaml)")
    return str(run / "config.yaml"), [*overrides, f"output.dir={run.parent}", f"output.name={run.name}"]


def check_run_path(path: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless `output.overwrite` is set."""
    if path.name == LATEST:
        raise ConfigError(f"output.name {LATEST!r} is reserved for the link to the newest run")
    if path.exists() and not overwrite:
        raise ConfigError(f"run directory {str(path)!r} already exists; pick another output.name or set output.overwrite=true")


def is_resumable(path: Path, resolved_config: str, overwrite: bool, requested: bool) -> bool:
    """True when `path` holds an unfinished run with a checkpoint, started with this same config."""
    unfinished = path.is_dir() and not (path / "manifest.json").exists() and any((path / "checkpoints").glob("step-*"))
    if requested and not unfinished:
        raise ConfigError(f"--resume: {str(path)!r} holds no unfinished run with a checkpoint")
    if not unfinished or (overwrite and not requested):
        return False
    recorded = (path / "config.yaml").read_text(encoding="utf-8") if (path / "config.yaml").is_file() else None
    if recorded != resolved_config:
        raise ConfigError(
            f"run directory {str(path)!r} holds an unfinished run with another config; resume it with "
            f"--resume {path}, or pick another output.name, or set output.overwrite=true"
        )
    return True


def decide_run_start(path: Path, resolved_config: str, overwrite: bool, requested: bool) -> bool:
    """True to resume the unfinished run at `path`; False to start it afresh (after checking it may be)."""
    if is_resumable(path, resolved_config, overwrite, requested):  # the same command again resumes
        return True
    check_run_path(path, overwrite)
    return False


def create_run_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    for sub in ("checkpoints", "predictions"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def point_latest(path: Path) -> None:
    """Atomically repoint `<output.dir>/latest` at `path`."""
    link = path.parent / LATEST
    tmp = path.parent / f".{LATEST}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(path.name)
    os.replace(tmp, link)
