"""Engines that run an exported ONNX artifact: ONNX Runtime (the reference) and OpenVINO, behind one call
(`feed -> outputs`), and optimum's ORTModel classes for the generative exports.

OpenVINO reads the same ONNX files: it runs the static-int8 QDQ artifact with int8 kernels on CPUs with VNNI/AMX,
and its results do not depend on what else is in the batch. Its CPU plugin would run fp32 models in bf16 on
such CPUs by default, so the precision hint is pinned to f32: the gate verified fp32 results.
"""

from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peftstd.errors import UserError

RUNTIMES = ("onnxruntime", "openvino")


@dataclass
class Engine:
    """One loaded artifact: `run(feed)` gives the outputs `inference.run_session` gives (logits, or start and
    end logits stacked on a last axis). `streams` calls may run at once, from as many threads."""

    runtime: str
    path: Path
    input_names: set[str]
    run: Callable[[dict[str, np.ndarray]], np.ndarray]
    device: str
    streams: int = 1

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.run({k: v for k, v in feed.items() if k in self.input_names})


def runtime_of(path: Path) -> str:
    """The runtime an artifact file runs on, by its format: an OpenVINO IR (.xml, NNCF's int8) on openvino, ONNX on
    onnxruntime (which OpenVINO also runs, when the gate judged it there)."""
    return "openvino" if Path(path).suffix == ".xml" else "onnxruntime"


def artifact_files(path: Path) -> list[Path]:
    """The files an artifact is made of: an OpenVINO IR is its .xml and the .bin of weights beside it."""
    path = Path(path)
    return [path, path.with_suffix(".bin")] if runtime_of(path) == "openvino" else [path]


def open_engine(path: Path, runtime: str = "onnxruntime", threads: int | None = None,
                disabled_optimizers: list[str] | None = None, spinning: bool = True, streams: int = 1) -> Engine:
    """`streams` > 1 splits the `threads` (default: every core) between that many concurrent calls, each on its own
    threads: a server keeps several batches in flight, and one stalled thread (the event loop took its core) then
    delays its own call only, not every parallel section of one call spread over all cores."""
    if streams < 1:
        raise UserError(f"streams must be at least 1, got {streams}")
    if runtime == "onnxruntime":
        from peftstd.runtime.inference import onnx_session, run_session

        per_call = max(1, (threads or os.cpu_count() or 1) // streams) if streams > 1 else threads
        session = onnx_session(path, per_call, disabled_optimizers, spinning)  # Run is thread-safe: streams share it
        return Engine(runtime, Path(path), {i.name for i in session.get_inputs()}, lambda feed: run_session(session, feed),
                      f"onnxruntime {session.get_providers()[0]}" + (f", {per_call} threads" if per_call else "")
                      + (f" x {streams} streams" if streams > 1 else ""), streams)
    if runtime == "openvino":
        return openvino_engine(Path(path), threads, streams)
    raise UserError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")


def openvino_engine(path: Path, threads: int | None = None, streams: int = 1) -> Engine:
    try:
        import openvino as ov
    except ImportError:
        raise UserError("the openvino runtime needs the `openvino` package (pip install openvino)") from None
    from peftstd.runtime.inference import SPAN_OUTPUTS

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
              "NUM_STREAMS": str(streams)}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    names = [o.get_any_name() for o in compiled.outputs]
    wanted = list(SPAN_OUTPUTS) if SPAN_OUTPUTS[0] in names else ["logits"]
    idle = queue.SimpleQueue()  # one infer request per stream; a call takes a free one
    for _ in range(streams):
        idle.put(compiled.create_infer_request())

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        request = idle.get()
        try:
            result = request.infer(feed)
            outputs = [np.array(result[compiled.output(name)]) for name in wanted]
        finally:
            idle.put(request)
        return outputs[0] if len(outputs) == 1 else np.stack(outputs, axis=-1)

    inputs = {i.get_any_name() for i in compiled.inputs}
    return Engine("openvino", path, inputs, run, f"openvino {ov.__version__} CPU" + (f", {threads} threads" if threads else "")
                  + (f" x {streams} streams" if streams > 1 else ""), streams)


@contextlib.contextmanager
def quiet():
    """Library warnings off: the tracer's, optimum's and the quantizer's notes are expected here, and the
    gate reports what matters."""
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def load_generative(folder: Path, task, kv_cache: bool, spinning: bool = True, threads: int | None = None):
    """A causal-LM or seq2seq artifact as optimum's ORTModel class of its task, on ONNX Runtime's CPU
    provider; benchmarks turn thread spinning off (see `inference.onnx_session`)."""
    import onnxruntime as ort
    import optimum.onnxruntime

    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    auto = getattr(optimum.onnxruntime, task.ort_model)
    return auto.from_pretrained(folder, provider="CPUExecutionProvider", use_cache=kv_cache, session_options=options)
