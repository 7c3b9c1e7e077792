"""Backends a benchmark can time: each is a callable on a fixed input batch, with its real device checked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from peftstd.runtime.inference import output_array


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


def engine_backend(name: str, path: Path, feed: dict[str, np.ndarray], threads: int, runtime: str = "onnxruntime",
                   disabled_optimizers: list[str] | None = None, engine=None) -> Backend:
    """An artifact on ONNX Runtime or OpenVINO; `disabled_optimizers` unset: the session settings recorded in
    the artifact's export.json. `engine`: one `timing_engine` already opened (several feeds, one compile)."""
    engine = engine or timing_engine(path, runtime, threads, disabled_optimizers)
    inputs = {k: v for k, v in feed.items() if k in engine.input_names}
    return Backend(name, lambda: engine.run(inputs), engine.device, path.stat().st_size / 2**20)


def timing_engine(path: Path, runtime: str, threads: int, disabled_optimizers: list[str] | None = None):
    """An artifact opened for timing beside other backends: no busy-waiting threads left behind to slow the next one
    down. ONNX Runtime: raises unless the CPU provider runs it."""
    from peftstd.runtime.engines import open_engine

    return open_engine(path, runtime, threads, disabled_optimizers, spinning=False)


def onnx_backend(name: str, path: Path, feed: dict[str, np.ndarray], threads: int,
                 disabled_optimizers: list[str] | None = None) -> Backend:
    return engine_backend(name, path, feed, threads, "onnxruntime", disabled_optimizers)
