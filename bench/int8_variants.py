#!/usr/bin/env python
"""Every int8 route a user could take for one run, timed side by side on this machine (issue 32).

    python bench/int8_variants.py RUN EXPORT_DIR --out bench/results/int8_variants

- peftstd: the export's gated artifacts on ONNX Runtime and OpenVINO, and what `serve --artifact auto` picks,
  run as the server runs it (dynamic int8 one row per call);
- optimum: its documented route at its best (peftstd/bench/peers.py: every CPU preset, per-channel on and off),
  each with ONNX Runtime's default session and with peftstd's (SkipLayerNormFusion off); the fastest of the twelve
  at each batch size is the peer every ratio is taken against;
- ONNX Runtime's quantizer on peftstd's fp32 graph with the choices optimum does not expose together: dynamic with
  per-tensor scales, with u8 weights, with reduce_range; static in QOperator form (QLinearMatMul) beside the
  export's QDQ;
- OpenVINO with NNCF's post-training int8 (`nncf.quantize`, transformer preset) of the same fp32 ONNX model;
- fp32 with ONNX Runtime's offline transformer fusions.
Batch 1 and 32 at sequence 128 (real text, no padding), interleaved; test accuracy of every model on the run's
test split. Writes NAME.json and NAME.md with the machine's CPU model and flags.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from export_speed import held_out_test
from provenance import machine_line, provenance, write_report

from peftstd.bench.peers import optimum_int8
from peftstd.bench.run import served_pick
from peftstd.export.merge import merge
from peftstd.export.pipeline import scratch_directory
from peftstd.runtime.backends import engine_backend
from peftstd.runtime.folders import ExportFolder, RunFolder
from peftstd.runtime.load import load_run
from peftstd.runtime.timing import fixed_length_feed, interleaved, summary


def ort_variants(export: ExportFolder, loaded, work: Path) -> dict[str, Path]:
    """ONNX Runtime's quantizer on the export's fp32 graph, with the choices peftstd's export does not make."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from peftstd.export.quantize import FeedReader, calibration_feeds, preprocess, quantizable_nodes
    from peftstd.runtime.inference import onnx_session
    from peftstd.runtime.taskdata import run_splits, task_data

    prepared = work / "prepared.onnx"
    preprocess(export.path / "model.onnx", prepared)
    nodes = quantizable_nodes(prepared)
    out = {}
    for name, options in (("ort dynamic per-tensor", {"per_channel": False, "weight_type": QuantType.QInt8}),
                          ("ort dynamic u8 weights", {"per_channel": True, "weight_type": QuantType.QUInt8}),
                          ("ort dynamic reduce_range", {"per_channel": True, "weight_type": QuantType.QInt8, "reduce_range": True})):
        out[name] = work / f"{name.replace(' ', '-')}.onnx"
        quantize_dynamic(str(prepared), str(out[name]), op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes, **options)
    static = export.record.stages.get("quantize", {}).get("artifacts", {}).get("int8-static")
    if static is not None:  # the export's static recipe (calibration, kept-float nodes) in QOperator form
        _, splits = run_splits(export.source_run.path, loaded.manifest)
        calibration = task_data(splits.train[:256], loaded.labels)
        feeds = calibration_feeds(loaded.tokenizer, calibration, {i.name for i in onnx_session(prepared).get_inputs()}, export.max_length)
        out["ort static QOperator"] = work / "ort-static-qoperator.onnx"
        quantize_static(str(prepared), str(out["ort static QOperator"]), FeedReader(feeds),
                        quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes, nodes_to_exclude=static["kept_in_float"],
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"WeightSymmetric": True, "CalibPercentile": 99.999, "CalibStridedMinMax": 1})
    return out


def nncf_model(export: ExportFolder, loaded, work: Path) -> Path:
    """OpenVINO IR quantized by NNCF's post-training quantization (transformer preset) on 256 training examples."""
    import nncf
    import openvino as ov

    from peftstd.runtime.taskdata import run_splits

    _, splits = run_splits(export.source_run.path, loaded.manifest)
    model = ov.Core().read_model(str(export.path / "model.onnx"))
    names = {port.any_name for port in model.inputs}
    samples = [{k: np.asarray([v], dtype=np.int64) for k, v in loaded.tokenizer(row.text, truncation=True, max_length=export.max_length).items()
                if k in names} for row in splits.train[:256]]
    quantized = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples))
    ov.save_model(quantized, str(work / "nncf-int8.xml"))
    return work / "nncf-int8.xml"


def accuracy(path: Path, runtime: str, loaded, test, max_length: int) -> float:
    from peftstd.runtime.engines import open_engine
    from peftstd.runtime.inference import engine_logits

    logits = engine_logits(open_engine(path, runtime, disabled_optimizers=[]), loaded.tokenizer, test, 32, max_length)
    return float((logits.argmax(-1) == test.label_ids).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("export")
    parser.add_argument("--out", default="bench/results/int8_variants")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sequence", type=int, default=128)
    args = parser.parse_args()
    args.run, args.export, args.out = (str(Path(p).resolve()) for p in (args.run, args.export, args.out))
    with scratch_directory() as scratch:
        run_benchmark(args, scratch)


def run_benchmark(args, work: Path) -> None:
    from peftstd.export.onnx_export import optimize_graph
    from peftstd.runtime.choice import choose_artifact, reason

    torch.set_num_threads(args.threads)
    loaded = load_run(args.run)
    export = ExportFolder(Path(args.export))
    test, max_length = held_out_test(loaded, Path(args.run))
    texts = [row["text"] for row in RunFolder(Path(args.run)).test_predictions()]
    started = time.perf_counter()
    models: dict[str, tuple[Path, str]] = {}  # name -> (file, runtime)
    for runtime in ("onnxruntime", "openvino"):
        for record in export.artifacts().values():
            if record.passed_on(runtime):
                models[f"peftstd {record.artifact} ({runtime})"] = (export.path / record.file, runtime)
    models.update({name: (path, "onnxruntime") for name, path in optimum_int8(merge(loaded.model)[0], loaded.tokenizer, work).items()})
    models.update({name: (path, "onnxruntime") for name, path in ort_variants(export, loaded, work).items()})
    models["nncf int8 (openvino)"] = (nncf_model(export, loaded, work), "openvino")
    from transformers import AutoConfig

    fused = optimize_graph(export.path / "model.onnx", work / "fused.onnx", AutoConfig.from_pretrained(export.path))
    if fused["applied"]:
        models["ort fp32 + transformer fusions"] = (work / "fused.onnx", "onnxruntime")
    prepared_s = time.perf_counter() - started
    metrics = {name: accuracy(path, runtime, loaded, test, max_length) for name, (path, runtime) in models.items()}
    record, runtime = choose_artifact(export)
    metrics.update({f"{name} + peftstd session": value for name, value in list(metrics.items()) if name.startswith("optimum-")})
    results = {**provenance(), "sequence": args.sequence, "threads": args.threads, "pick": {"artifact": record.artifact, "runtime": runtime,
               "why": reason(export.record.choice) if export.record.choice else None}, "preparation_s": prepared_s, "rows": []}
    for batch in (1, 32):
        feed = fixed_length_feed(loaded.tokenizer, texts, batch, args.sequence)
        backends = [engine_backend(name, path, feed, args.threads, rt, None if name.startswith("peftstd") else [])
                    for name, (path, rt) in models.items()]
        # optimum's models also with peftstd's session setting (a user can set it too): the peer at its best
        backends += [engine_backend(f"{name} + peftstd session", path, feed, args.threads, rt, export.disabled_optimizers)
                     for name, (path, rt) in models.items() if name.startswith("optimum-")]
        backends.append(served_pick(export.path, feed, args.threads))
        metrics[backends[-1].name] = metrics[f"peftstd {record.artifact} ({runtime})"]
        times = interleaved(backends, repeats=max(5, args.repeats // max(1, batch // 4)))
        for backend in backends:
            row = {"backend": backend.name, "batch": batch, "accuracy": metrics.get(backend.name), **summary(times[backend.name], batch, args.sequence)}
            results["rows"].append(row)
            print(f"batch {batch:>3} {backend.name:<52} {row['samples_per_s']:8.1f} samples/s  acc {row['accuracy']:.4f}", flush=True)
    write_report(Path(args.out), results, markdown(results))


def markdown(results: dict) -> str:
    rows = results["rows"]
    lines = [f"# int8 routes for one run, sequence {results['sequence']}, {results['threads']} threads", "",
             f"`{results['command']}`", "", f"Machine: {machine_line(results)}", "",
             f"`peftstd serve --artifact auto` runs {results['pick']['artifact']} on {results['pick']['runtime']}"
             + (f" ({results['pick']['why']})" if results["pick"]["why"] else "") + ".", ""]
    for batch in sorted({r["batch"] for r in rows}):
        cells = [r for r in rows if r["batch"] == batch]
        optimum = max((r for r in cells if r["backend"].startswith("optimum-")), key=lambda r: r["samples_per_s"])
        lines += [f"## Batch {batch}", "", f"Ratios against optimum's best preset here: **{optimum['backend']}** "
                  f"({optimum['samples_per_s']:.1f} samples/s).", "",
                  "| route | samples/s | p50 ms | vs optimum best | test accuracy |", "|---|---|---|---|---|"]
        for r in sorted(cells, key=lambda r: -r["samples_per_s"]):
            lines.append(f"| {r['backend']} | {r['samples_per_s']:.1f} | {r['p50_ms']:.2f} | {r['samples_per_s'] / optimum['samples_per_s']:.2f}x | "
                         f"{r['accuracy']:.4f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
