#!/usr/bin/env python
"""Export speed: PyTorch eager against peftstd's exported artifacts, interleaved in one run.

    python bench/export_speed.py RUN EXPORT_DIR [EXPORT_DIR ...] [--out bench/results/NAME]

Batch 1 latency and batch 32 throughput at sequence 128 (real VADER text, no padding) for PyTorch
eager fp32, PyTorch bf16 autocast, every ONNX artifact of each export folder, and optimum's own
pipeline on the same run (ORTModelForSequenceClassification export + ORTQuantizer dynamic int8 with
its AVX512-VNNI config: the Hugging Face anchor). Test accuracy comes from each export's gate, and
for optimum's artifacts from the same test split. Writes NAME.json and NAME.md.

peftstd artifacts run with the session settings recorded in their export.json. So that the table
shows what those settings are worth, the int8-dynamic artifact also runs with ONNX Runtime's
defaults, and optimum's int8 model also runs with peftstd's settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance import machine_line, provenance

from peftstd.export.merge import merge
from peftstd.export.pipeline import scratch_directory
from peftstd.runtime.backends import engine_backend, onnx_backend, torch_backend
from peftstd.runtime.folders import ExportFolder, RunFolder
from peftstd.runtime.load import load_run
from peftstd.runtime.timing import fixed_length_feed, interleaved, summary


def optimum_pipeline(loaded, run: Path, work: Path) -> dict[str, Path]:
    """optimum's documented CPU route: export the merged model, then ORTQuantizer dynamic int8."""
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    merged, _ = merge(loaded.model)
    merged.save_pretrained(work / "merged")
    loaded.tokenizer.save_pretrained(work / "merged")
    ORTModelForSequenceClassification.from_pretrained(work / "merged", export=True).save_pretrained(work / "optimum-fp32")
    loaded.tokenizer.save_pretrained(work / "optimum-fp32")
    quantizer = ORTQuantizer.from_pretrained(work / "optimum-fp32")
    quantizer.quantize(save_dir=work / "optimum-int8", quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True))
    return {"optimum/fp32": work / "optimum-fp32" / "model.onnx", "optimum/int8": next((work / "optimum-int8").glob("*.onnx"))}


def held_out_test(loaded, run: Path):
    """(test data, max length) of the run, rebuilt once and checked against its manifest."""
    from peftstd.runtime.taskdata import run_splits, task_data

    cfg, splits = run_splits(run, loaded.manifest)
    return task_data(splits.test, loaded.labels), cfg.model.max_length


def onnx_accuracy(path: Path, loaded, test, max_length: int) -> float:
    from peftstd.runtime.inference import onnx_logits, onnx_session

    logits = onnx_logits(onnx_session(path), loaded.tokenizer, test, 32, max_length)
    return float((logits.argmax(-1) == test.label_ids).mean())


def bf16_accuracy(model, loaded, test, max_length: int) -> float:
    from peftstd.runtime.inference import torch_logits

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch_logits(model, loaded.tokenizer, test, 32, max_length)
    return float((logits.argmax(-1) == test.label_ids).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("exports", nargs="+")
    parser.add_argument("--out", default="bench/results/export_speed")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--no-optimum", action="store_true", help="skip optimum's pipeline")
    args = parser.parse_args()
    args.run, args.out = str(Path(args.run).resolve()), str(Path(args.out).resolve())
    args.exports = [str(Path(e).resolve()) for e in args.exports]
    with scratch_directory() as scratch:  # ONNX Runtime's tools drop uuid-named files in the working directory
        run_benchmark(args, scratch)


def run_benchmark(args, scratch: Path) -> None:
    torch.set_num_threads(args.threads)

    loaded = load_run(args.run)
    eager, _ = merge(loaded.model)
    run = RunFolder(Path(args.run))
    exports = [ExportFolder(Path(e)) for e in args.exports]  # read once, used for every batch size
    texts = [row["text"] for row in run.test_predictions()]
    results = {**provenance(), "sequence": args.sequence, "threads": args.threads, "rows": []}
    metrics = {"pytorch-fp32": run.metrics["test"]["accuracy"]}
    optimum = {} if args.no_optimum else optimum_pipeline(loaded, Path(args.run), scratch)
    test, max_length = held_out_test(loaded, Path(args.run))
    for name, path in optimum.items():
        metrics[name] = onnx_accuracy(path, loaded, test, max_length)
    metrics["pytorch-bf16"] = bf16_accuracy(eager, loaded, test, max_length)
    for batch in (int(b) for b in args.batches.split(",")):
        feed = fixed_length_feed(loaded.tokenizer, texts, batch, args.sequence)
        backends = [torch_backend("pytorch-fp32", eager, feed), torch_backend("pytorch-bf16", eager, feed, autocast_bf16=True)]
        for folder in exports:
            for record in folder.artifacts().values():
                name = f"{folder.path.name}/{record.artifact}"
                backends.append(engine_backend(name, folder.path / record.file, feed, args.threads, record.runtime))
                metrics[name] = record.value
                if record.artifact == "int8-dynamic" and folder.disabled_optimizers:
                    backends.append(onnx_backend(f"{name} (ORT defaults)", folder.path / record.file, feed, args.threads, []))
                    metrics[f"{name} (ORT defaults)"] = record.value
        backends += [onnx_backend(name, path, feed, args.threads) for name, path in optimum.items()]
        disabled = exports[0].disabled_optimizers
        if "optimum/int8" in optimum and disabled:
            backends.append(onnx_backend("optimum/int8 (peftstd session)", optimum["optimum/int8"], feed, args.threads, disabled))
            metrics["optimum/int8 (peftstd session)"] = metrics["optimum/int8"]
        times = interleaved(backends, repeats=max(5, args.repeats // max(1, batch // 4)))
        baseline = summary(times["pytorch-fp32"], batch, args.sequence)
        for backend in backends:
            row = {"backend": backend.name, "batch": batch, "device": backend.device, "size_mb": backend.size_mb,
                   "accuracy": metrics.get(backend.name),
                   **summary(times[backend.name], batch, args.sequence)}
            row["speedup_vs_pytorch_fp32"] = baseline["p50_ms"] / row["p50_ms"]
            results["rows"].append(row)
            print(f"batch {batch:>3} {backend.name:<40} p50 {row['p50_ms']:8.2f} ms  p95 {row['p95_ms']:8.2f}  "
                  f"{row['samples_per_s']:8.1f} samples/s  x{row['speedup_vs_pytorch_fp32']:.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Export speed, sequence {args.sequence}, {args.threads} threads", "", f"`{results['command']}`", "",
             f"Machine: {machine_line(results)}", "",
             "| batch | backend | p50 ms | p95 ms | p99 ms | samples/s | speed-up vs PyTorch fp32 | test accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        accuracy = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        lines.append(f"| {r['batch']} | {r['backend']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['samples_per_s']:.1f} | {r['speedup_vs_pytorch_fp32']:.2f}x | {accuracy} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    chart(results, out.with_suffix(".png"))


def chart(results: dict, path: Path) -> None:
    """Speed-up over PyTorch eager fp32 per backend, one bar group per batch size, test accuracy in the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    batches = sorted({r["batch"] for r in rows})
    names = list(dict.fromkeys(r["backend"] for r in rows))
    cell = {(r["backend"], r["batch"]): r for r in rows}
    figure, axis = plt.subplots(figsize=(10, 0.45 * len(names) * len(batches) + 1.5))
    height = 0.8 / len(batches)
    for i, batch in enumerate(batches):
        values = [cell[n, batch]["speedup_vs_pytorch_fp32"] if (n, batch) in cell else 0 for n in names]
        positions = [k + i * height for k in range(len(names))]
        axis.barh(positions, values, height=height, label=f"batch {batch}")
        for y, value in zip(positions, values):
            axis.text(value, y, f" {value:.2f}x", va="center", fontsize=8)
    accuracy = {n: cell[n, batches[0]]["accuracy"] for n in names if (n, batches[0]) in cell}
    axis.set_yticks([k + 0.4 - height / 2 for k in range(len(names))])
    axis.set_yticklabels([f"{n} (acc {accuracy[n]:.4f})" if accuracy.get(n) is not None else n for n in names], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel(f"speed-up over PyTorch eager fp32 (p50 latency, sequence {results['sequence']}, {results['threads']} threads)")
    axis.legend(loc="lower right")
    axis.set_title(f"Export speed on {results['machine']['cpu']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
