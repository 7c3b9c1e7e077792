"""Backends a benchmark can time: each is a callable on a fixed input batch, with its real device checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


@dataclass
class Backend:
    name: str
    run: Callable[[], object]
    device: str  # what actually runs it, checked where it can be
    size_mb: float | None = None


def torch_backend(name: str, model, feed: dict[str, np.ndarray], autocast_bf16: bool = False) -> Backend:
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
    model.eval()

    @torch.inference_mode()
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            return model(**tensors).logits

    return Backend(name, run, f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads")


def onnx_backend(name: str, path: Path, feed: dict[str, np.ndarray], threads: int) -> Backend:
    from peftstd.export.inference import onnx_session

    session = onnx_session(path, threads)  # raises unless the CPU provider really runs it
    names = {i.name for i in session.get_inputs()}
    inputs = {k: v for k, v in feed.items() if k in names}
    return Backend(name, lambda: session.run(["logits"], inputs), f"onnxruntime {session.get_providers()[0]}, {threads} threads",
                   path.stat().st_size / 2**20)
