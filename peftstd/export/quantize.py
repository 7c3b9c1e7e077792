"""Stage 5: int8 with ONNX Runtime's quantizer and NNCF, accuracy-driven.

CPU: dynamic int8 (weights int8, activations quantized at run time) and static int8 (activation ranges
calibrated on the run's training data) with ONNX Runtime's quantizer, and an OpenVINO IR quantized by NNCF.
GPU: static symmetric QDQ, the form TensorRT consumes; dynamic int8 is never produced for the CUDA provider
(it runs slower there than fp32). When an ONNX Runtime artifact exceeds the metric budget, the most sensitive
MatMuls (the sensitivity pass) stay in float.
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


def calibration_feeds(tokenizer, calibration, input_names: set[str], max_length: int) -> list[dict[str, np.ndarray]]:
    """Static int8's calibration feeds: batches of 8, all padded to the longest calibration example. One shape for
    all: padded to each batch's own longest instead, static int8 lost so much on the search split that the
    sensitivity pass kept 38 of 41 MatMuls in float (ranges measured mostly without padding)."""
    from peftstd.runtime.inference import batches

    longest = max(int(batch["attention_mask"].sum(-1).max()) for batch in batches(tokenizer, calibration, 256, max_length))
    feeds = [{k: v for k, v in feed.items() if k in input_names} for feed in batches(tokenizer, calibration, 8, longest, fixed_length=True)]
    return [feed for feed in feeds if len(feed["input_ids"]) == 8]  # the calibrators stack feeds: one shape only


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


def quantize_nncf_int8(src: Path, dst: Path, samples: list[dict[str, np.ndarray]]) -> None:
    """OpenVINO IR (`dst`, an .xml beside its .bin) of the fp32 ONNX model `src`, int8 by NNCF's post-training
    quantization with its transformer preset, calibrated on `samples` (one unpadded example each)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples))
    ov.save_model(quantized, str(dst))


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


def quantize_artifacts(folder, fp32_path, profile, calibration, search, task, loaded, max_length, report) -> dict:
    """int8 (and fp16) artifacts; int8 keeps its most sensitive MatMuls in float until it fits the budget.

    Drops are judged on `search` (validation + training examples the calibration never saw), never on
    the test split the gate uses; the search aims at half the budget, since the gate's test split is
    another sample and an artifact that only just fits on one sample fails on the other half the time.
    """
    import functools
    import tempfile

    from peftstd.export.verify import metric_points
    from peftstd.runtime.engines import open_engine, runtime_of
    from peftstd.runtime.inference import batches, engine_logits, onnx_logits, onnx_session

    work = Path(tempfile.mkdtemp(dir=Path.cwd()))  # inside the export's scratch directory
    prepared = work / "prepared.onnx"
    preprocessing = preprocess(fp32_path, prepared)
    input_names = {i.name for i in onnx_session(fp32_path).get_inputs()}
    static = profile.int8 and (profile.target == "gpu" or "static" in profile.cpu_int8)  # ONNX Runtime's calibrated int8
    feeds = calibration_feeds(loaded.tokenizer, calibration, input_names, max_length) if static else []
    probe = search.head(256)

    def logits(path: Path | bytes, data) -> np.ndarray:
        if isinstance(path, bytes):  # a sensitivity-pass variant, in memory
            return onnx_logits(onnx_session(path, disabled_optimizers=profile.session_disabled_optimizers), loaded.tokenizer, data,
                               profile.batch_size, max_length)
        engine = open_engine(path, runtime_of(path), disabled_optimizers=profile.session_disabled_optimizers)
        return engine_logits(engine, loaded.tokenizer, data, profile.batch_size, max_length)

    @functools.cache  # fp32's references: computed once, and only when a search needs them
    def reference_points() -> float:
        return metric_points(task, logits(fp32_path, search), search.label_ids)

    @functools.cache
    def reference_probe() -> np.ndarray:
        return logits(fp32_path, probe)

    def search_drop(path: Path) -> float:
        return reference_points() - metric_points(task, logits(path, search), search.label_ids)

    target = profile.budget / 2
    stage: dict = {"isa": int8_isa(), "preprocessing": preprocessing, "calibration_examples": len(calibration.texts),
                   "search_examples": len(search.texts), "search_target_points": target, "artifacts": {}}
    if static:
        stage |= {"calibration": "percentile 99.999", "calibration_batches": len(feeds), "calibration_streamed": "one batch of 8 at a time"}
    out: dict[str, Path] = {}

    cache = work / "calibration.json"
    schemes = []
    if profile.int8 and profile.target == "cpu" and "dynamic" in profile.cpu_int8:
        schemes += [("int8-dynamic", "model.int8.onnx", lambda ex, dst: quantize_dynamic_int8(prepared, dst, profile.per_channel, ex))]
    if profile.int8 and profile.target == "cpu" and "static" in profile.cpu_int8:
        schemes += [("int8-static", "model.int8-static.onnx",
                     lambda ex, dst: quantize_static_int8(prepared, dst, feeds, profile.per_channel, False, ex, cache))]
    if profile.int8 and profile.target == "cpu" and "nncf" in profile.cpu_int8:
        samples = [{k: v for k, v in one.items() if k in input_names} for one in batches(loaded.tokenizer, calibration, 1, max_length)]
        schemes += [("int8-nncf", "model.int8-nncf.xml", lambda ex, dst: quantize_nncf_int8(fp32_path, dst, samples))]
    if profile.int8 and profile.target == "gpu":
        schemes += [("int8-qdq", "model.int8-qdq.onnx",
                     lambda ex, dst: quantize_static_int8(prepared, dst, feeds, profile.per_channel, True, ex, cache))]
    for name, filename, make in schemes:
        cache.unlink(missing_ok=True)
        dst = folder / filename
        make([], dst)
        excluded: list[str] = []
        if dst.suffix != ".onnx":  # NNCF's IR has no node exclusion here, so no search could change it: the gate judges it as it is
            stage["artifacts"][name] = {"file": filename, "search_drop_points": None, "kept_in_float": excluded}
            out[name] = dst
            continue
        drop = search_drop(dst)
        if drop > target:
            import onnx

            nodes, quantized = quantizable_nodes(prepared), onnx.load(str(dst))
            float_weights = {init.name: init for init in onnx.load(str(prepared)).graph.initializer}

            def probe_error(kept_float: list[str], quantized=quantized, float_weights=float_weights) -> float:
                variant = keep_float(quantized, float_weights, kept_float)
                return float(((logits(variant, probe) - reference_probe()) ** 2).mean())

            ranked = sensitivity(nodes, probe_error)
            del quantized, float_weights
            for count in (1, 2, 4, 8, 16, len(nodes)):
                excluded = ranked[:count]
                make(excluded, dst)
                drop = search_drop(dst)
                if drop <= target:
                    break
        stage["artifacts"][name] = {"file": filename, "search_drop_points": drop, "kept_in_float": excluded}
        out[name] = dst
    if profile.fp16:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True), str(folder / "model.fp16.onnx"))
        out["fp16"] = folder / "model.fp16.onnx"
        stage["artifacts"]["fp16"] = {"file": "model.fp16.onnx"}
    report["stages"]["quantize"] = stage
    return out
