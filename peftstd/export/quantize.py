"""Stage 5: int8 with ONNX Runtime's quantizer, accuracy-driven.

CPU: dynamic int8 (weights int8, activations quantized at run time) and static int8 (activation ranges
calibrated on the run's training data). GPU: static symmetric QDQ, the form TensorRT consumes; dynamic
int8 is never produced for the CUDA provider (it runs slower there than fp32). When an artifact
exceeds the metric budget, the most sensitive MatMuls (per-layer sensitivity pass) stay in float.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from peftstd.basics.hardware import cpu_flags

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_isa() -> dict:
    """Without VNNI/AMX, u8s8 products can saturate: ONNX Runtime then needs 7-bit weights (reduce_range)."""
    found = sorted(cpu_flags().intersection(VNNI_FLAGS))
    return {"int8_units": found, "reduce_range": not found}


def preprocess(src: Path, dst: Path) -> str:
    """The shape inference and graph clean-up ONNX Runtime recommends before quantizing, into `dst`; says which ran.

    Symbolic shape inference fails on torch's dynamo-exported graphs ("Incomplete symbolic shape inference"); ONNX's
    own shape inference with ORT's optimization then still runs and tags the model as pre-processed (without it the
    quantizer warns dozens of times, rightly)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic, what in ((False, "symbolic shape inference + ORT optimization"), (True, "ONNX shape inference + ORT optimization")):
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
            return what
        except Exception:  # noqa: BLE001, S112 - shape inference does not cover every exported graph; the next step down still works
            continue
    shutil.copy(src, dst)
    return "none (shape inference failed; the raw graph is quantized)"


def quantizable_nodes(path: Path) -> list[str]:
    """MatMul/Gemm nodes whose second input is a weight (initializer): the ones int8 changes."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in weights]


def quantize_dynamic_int8(src: Path, dst: Path, per_channel: bool, exclude: Iterable[str] = ()) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), per_channel=per_channel, reduce_range=int8_isa()["reduce_range"], weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=quantizable_nodes(src), nodes_to_exclude=list(exclude),
    )


class FeedReader:
    """onnxruntime's CalibrationDataReader over a list of input feeds, readable in ranges (`set_range`), so that
    calibration can collect one feed at a time (see `quantize_static_int8`)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.all = feeds
        self.feeds = iter(feeds)

    def __len__(self) -> int:
        return len(self.all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.feeds = iter(self.all[start_index:end_index])

    def get_next(self):
        return next(self.feeds, None)


def quantize_static_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], per_channel: bool,
                         for_tensorrt: bool = False, exclude: Iterable[str] = (), cache: Path | None = None) -> None:
    """Static QDQ int8; `cache` keeps the calibrated ranges so that re-quantizing skips calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        reduce_range=False if for_tensorrt else int8_isa()["reduce_range"],
        activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=quantizable_nodes(src), nodes_to_exclude=list(exclude),
        # Percentile, not MinMax: a few outlier activations in BERT-style models would stretch MinMax ranges.
        calibrate_method=CalibrationMethod.Percentile,
        # One feed per collection step ("CalibStridedMinMax" drives the chunked collection for every calibrator):
        # the histogram calibrator otherwise keeps every intermediate tensor of every feed in memory until the end,
        # which took a MiniLM export at 256 tokens to 21.5 GB and the OOM killer. Histograms merge across steps.
        extra_options={"ActivationSymmetric": for_tensorrt, "WeightSymmetric": True, "CalibPercentile": 99.999,
                       "CalibStridedMinMax": 1},
        calibration_cache_path=cache,
    )


def keep_float(quantized, float_weights: dict, nodes: Iterable[str]) -> bytes:
    """The serialized QDQ model `quantized` with `nodes` reading float inputs: each activation from before its
    QuantizeLinear, each weight (and bias) from the float model, as ONNX Runtime's `nodes_to_exclude` leaves them.
    The model object is restored afterwards. Hand-written: ONNX Runtime cannot un-quantize one node of a quantized
    model, and re-quantizing the whole model for each node took 2.6 s a call (41 calls, 109 s of a MiniLM export)."""
    graph = quantized.graph
    producers = {output: node for node in graph.node for output in node.output}
    present = {init.name for init in graph.initializer}
    wanted, changed, added = set(nodes), [], 0
    for node in graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dequantize = producers.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            source = producers.get(dequantize.input[0])
            weight = dequantize.input[0].removesuffix("_quantized")
            if source is not None and source.op_type == "QuantizeLinear":
                replacement = source.input[0]
            elif weight in float_weights:
                replacement = f"{weight}_float"  # a quantized bias's DequantizeLinear output keeps the float name
                if replacement not in present:
                    graph.initializer.append(float_weights[weight])
                    graph.initializer[-1].name = replacement
                    present.add(replacement)
                    added += 1
            else:
                continue
            changed.append((node, i, name))
            node.input[i] = replacement
    try:
        return quantized.SerializeToString()
    finally:
        for node, i, name in changed:
            node.input[i] = name
        if added:
            del graph.initializer[-added:]


def sensitivity(nodes: list[str], error_of: Callable[[list[str]], float]) -> list[str]:
    """Nodes, the most sensitive first: those whose int8 error disappears most when they stay in float.

    Coarse to fine, since each trial runs the model: contiguous groups of about sqrt(n) nodes in graph order (a
    transformer layer's MatMuls) stay in float one group at a time; then the nodes of the two groups that gained
    most, one at a time; the other groups' nodes follow in their group's order. MiniLM: 20 trials instead of 42.
    `error_of(kept_float)` is the error with those nodes in float."""
    baseline = error_of([])
    size = max(1, round(math.sqrt(len(nodes))))
    groups = sorted((nodes[i : i + size] for i in range(0, len(nodes), size)), key=lambda group: baseline - error_of(group), reverse=True)
    ranked = []
    for rank, group in enumerate(groups):
        ranked += sorted(group, key=lambda node: error_of([node])) if rank < 2 else group
    return ranked
