"""Backends a benchmark can time: each is a callable on a fixed input batch, with its real device checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from peftstd.export.inference import output_array


@dataclass
class Backend:
    name: str
    run: Callable[[], object]
    device: str  # what actually runs it, checked where it can be
    size_mb: float | None = None


def torch_backend(name: str, model, feed: dict[str, np.ndarray], autocast_bf16: bool = False, device: str = "cpu") -> Backend:
    tensors = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}
    model.eval().to(device)
    cuda = device.startswith("cuda")

    @torch.inference_mode()
    def run():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast_bf16):
            logits = output_array(model(**tensors))
        if cuda:
            torch.cuda.synchronize()  # time the kernels, not their launch
        return logits

    where = torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads"
    return Backend(name, run, f"torch {torch.__version__} {where}")


def torch_int8_backend(name: str, model, feed: dict[str, np.ndarray]) -> Backend:
    """PyTorch dynamic int8 (torch.ao quantize_dynamic on every nn.Linear)."""
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    backend = torch_backend(name, quantized, feed)
    backend.device += f", dynamic int8 ({torch.backends.quantized.engine})"
    return backend


def torch_compile_backend(name: str, model, feed: dict[str, np.ndarray], device: str = "cpu") -> Backend:
    compiled = torch.compile(model, dynamic=True)
    backend = torch_backend(name, compiled, feed, device=device)
    backend.device += ", torch.compile (inductor)"
    return backend


def onnx_backend(name: str, path: Path, feed: dict[str, np.ndarray], threads: int,
                 disabled_optimizers: list[str] | None = None) -> Backend:
    """`disabled_optimizers` unset: the session settings recorded in the artifact's export.json."""
    from peftstd.export.inference import onnx_session, run_session

    # Interleaved with other backends: no busy-waiting threads left behind to slow the next one down.
    session = onnx_session(path, threads, disabled_optimizers, spinning=False)  # raises unless the CPU provider really runs it
    names = {i.name for i in session.get_inputs()}
    inputs = {k: v for k, v in feed.items() if k in names}
    return Backend(name, lambda: run_session(session, inputs), f"onnxruntime {session.get_providers()[0]}, {threads} threads",
                   path.stat().st_size / 2**20)
