"""Provenance of a run: enough to reproduce and audit it (Ludwig's description.json, plus hashes)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import resource
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from peftstd import __version__
from peftstd.basics.hardware import hardware
from peftstd.basics.hashing import sha256_file
from peftstd.config.schema import SCHEMA_VERSION

PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "adapters", "bitsandbytes", "tokenizers", "safetensors",
    "datasets", "numpy", "scikit-learn", "pydantic", "onnx", "onnxruntime", "optimum", "optimum-onnx",
    "openvino", "fastapi", "uvicorn",
)
LAUNCHER_VARS = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "peftstd": __version__}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_commit(where: Path) -> dict[str, Any] | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def peak_memory_mb() -> dict[str, float]:
    peak = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def file_hashes(run_dir: Path, skip: tuple[str, ...] = ("manifest.json",)) -> dict[str, str]:
    """sha256 of every file the run wrote outside `checkpoints/` and `tensorboard/`."""
    hashes = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir).as_posix()
        if path.is_file() and relative not in skip and not relative.startswith(("checkpoints/", "tensorboard/")):
            hashes[relative] = sha256_file(path)
    return hashes


def base_manifest() -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "peftstd_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        # A launcher (accelerate launch, torchrun) is invisible in argv; its environment says what it set up.
        "launcher_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("ACCELERATE_") or k in LAUNCHER_VARS},
        "cwd": os.getcwd(),
        "git": git_commit(Path(__file__).resolve().parent),
        "packages": package_versions(),
        "hardware": hardware(),
    }
