"""`peftstd bench TARGET`: every backend of a run or export, side by side on a batch x sequence grid.

Backends are timed interleaved (A B C A B C ...) after a warm-up, so drift on a shared machine hits
all of them alike; each backend's real device/provider is checked, not assumed. Results: bench.json
(machine, versions, raw timings), bench.md (table), bench.png (latency against batch per backend).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from peftstd.errors import UserError
from peftstd.tasks import GENERATIVE_TASKS


def resolve_target(target: Path) -> tuple[Path, Path | None]:
    """(run directory, export folder or None) for a run or an export folder; a run's own `export/` counts."""
    from peftstd.runtime.folders import ExportFolder, open_target

    run, export = open_target(target)
    if export is None and ExportFolder.is_export(run.path / "export"):
        export = ExportFolder(run.path / "export")
    return run.path, export.path if export else None


def build_backends(model, export: Path | None, feed, threads: int, names: set[str] | None, device: str = "cpu"):
    """PyTorch backends of the run's model, and each gated artifact on ONNX Runtime and (where the `openvino`
    package is installed) OpenVINO, which runs the same files."""
    import importlib.util

    import torch

    from peftstd.runtime.backends import engine_backend, torch_backend, torch_compile_backend, torch_int8_backend
    from peftstd.runtime.folders import ExportFolder
    from peftstd.training.precision import resolve_precision

    factories = {
        "pytorch-fp32": lambda: torch_backend("pytorch-fp32", model, feed, device=device),
        "torch.compile": lambda: torch_compile_backend("torch.compile", model, feed, device=device),
    }
    if device == "cpu":  # torch.ao dynamic int8 kernels are CPU-only
        factories["pytorch-int8-dynamic"] = lambda: torch_int8_backend("pytorch-int8-dynamic", model, feed)
    if resolve_precision("auto", device.startswith("cuda") and torch.cuda.is_available())[0] == "bf16":  # native bf16 only
        factories["pytorch-bf16"] = lambda: torch_backend("pytorch-bf16", model, feed, autocast_bf16=True, device=device)
    if export is not None:
        runtimes = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
        for runtime in runtimes:
            for record in ExportFolder(export).artifacts().values():
                if not record.passed_on(runtime):  # NNCF's OpenVINO IR does not load in ONNX Runtime
                    continue
                name = f"{runtime}-{record.artifact}"
                factories[name] = lambda r=record, n=name, rt=runtime: engine_backend(n, export / r.file, feed, threads, rt)
    return [make() for name, make in factories.items() if names is None or name in names]


def artifact_metrics(run: Path, export: Path | None) -> dict[str, float]:
    """The task's primary test metric of the run (PyTorch) and of each gated artifact, on every runtime."""
    from peftstd.runtime.folders import ExportFolder, RunFolder
    from peftstd.tasks import PRIMARY_METRIC

    folder = RunFolder(run)
    metrics = {"pytorch-fp32": folder.metrics["test"][PRIMARY_METRIC[folder.task]]}
    if export is not None:
        for record in ExportFolder(export).artifacts().values():
            metrics[f"{record.runtime}-{record.artifact}"] = record.value
            if record.openvino is not None:  # the gate's own OpenVINO run of the file, not ONNX Runtime's figure
                metrics[f"openvino-{record.artifact}"] = record.openvino.value
    return metrics


def prediction_text(record: dict) -> str:
    """The input text of one `predictions/test.jsonl` record, whatever the task wrote."""
    if "tokens" in record:
        return " ".join(record["tokens"])
    if "question" in record:
        return record["question"] + " " + record["context"]
    return record.get("text", record.get("prompt"))


def served_pick(export: Path, feed, threads: int):
    """What `peftstd serve --artifact auto` runs here, timed as it runs it (dynamic int8: one row per call)."""
    from peftstd.runtime.backends import Backend
    from peftstd.runtime.choice import load_predictor

    predictor = load_predictor(export, threads=threads, spinning=False)
    rows = [{k: feed[k][i].tolist() for k in feed if k in predictor.engine.input_names} for i in range(len(feed["input_ids"]))]
    name = f"peftstd-pick ({predictor.record.artifact} on {predictor.runtime}, as served)"
    return Backend(name, lambda: predictor.forward(rows), predictor.device, None)


def versus_peer(rows: list[dict], peer: str) -> list[dict]:
    """Per grid cell: peftstd's pick as served against the fastest of the peer's configurations."""
    out = []
    for batch, sequence in dict.fromkeys((r["batch"], r["sequence"]) for r in rows):
        cell = [r for r in rows if (r["batch"], r["sequence"]) == (batch, sequence)]
        pick = next(r for r in cell if r["backend"].startswith("peftstd-pick"))
        best = max((r for r in cell if r["backend"].startswith(peer)), key=lambda r: r["samples_per_s"])
        out.append({"batch": batch, "sequence": sequence, "pick": pick["backend"], "pick_samples_per_s": pick["samples_per_s"],
                    "peer": best["backend"], "peer_samples_per_s": best["samples_per_s"], "ratio": pick["samples_per_s"] / best["samples_per_s"]})
    return out


def run_bench(target: Path, out: Path, batches: list[int], sequences: list[int], threads: int | None,
              repeats: int, backends: set[str] | None, device: str = "cpu", peers: str | None = None) -> dict:
    import psutil
    import torch
    from rich.table import Table
    from tqdm.auto import tqdm

    from peftstd.basics.console import console as make_console
    from peftstd.basics.hardware import hardware
    from peftstd.export.merge import merge
    from peftstd.run.manifest import package_versions
    from peftstd.runtime.load import load_run
    from peftstd.runtime.timing import fixed_length_feed, interleaved, summary

    run, export = resolve_target(target)
    from peftstd.runtime.folders import RunFolder

    task = RunFolder(run).task
    if task in GENERATIVE_TASKS:
        raise UserError(f"peftstd bench times single forward passes of encoder tasks; for this {task} run, time generation with "
                        f"`python bench/generate_speed.py {run} EXPORT_DIR` (GGUF files: `python bench/gguf_export.py`)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU on this machine")
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    loaded = load_run(run)
    model, _ = merge(loaded.model)
    texts = [prediction_text(record) for record in RunFolder(run).test_predictions()]
    metrics = artifact_metrics(run, export)
    result = {"command": shlex.join(sys.argv), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "target": str(target), "machine": hardware(), "versions": package_versions(), "threads": threads,
              "repeats": repeats, "rows": [], "raw_seconds": {}}
    grid = [(b, s) for s in sequences for b in batches]
    peer_models = {}
    if peers:
        if export is None or task != "text-classification":
            raise UserError("--peers optimum compares an export's pick with optimum's int8 of a text-classification run; give its export folder")
        import tempfile

        from peftstd.bench.peers import optimum_int8
        from peftstd.runtime.folders import ExportFolder

        scratch = tempfile.TemporaryDirectory(prefix="peftstd-bench-")
        peer_models = optimum_int8(model, loaded.tokenizer, Path(scratch.name))
        session = ExportFolder(export).disabled_optimizers
    for batch, sequence in tqdm(grid, desc="bench", disable=not sys.stderr.isatty()):
        feed = fixed_length_feed(loaded.tokenizer, texts, batch, sequence)
        cell = build_backends(model, export, feed, threads, backends, device)
        if peers:
            from peftstd.runtime.backends import engine_backend

            cell.append(served_pick(export, feed, threads))
            cell += [engine_backend(name, path, feed, threads, "onnxruntime", []) for name, path in peer_models.items()]
            cell += [engine_backend(f"{name}+peftstd-session", path, feed, threads, "onnxruntime", session)
                     for name, path in peer_models.items() if session]
        times = interleaved(cell, repeats=repeats)
        for backend in cell:
            row = {"backend": backend.name, "batch": batch, "sequence": sequence, "device": backend.device,
                   "size_mb": backend.size_mb, "metric": metrics.get(backend.name),
                   "rss_mb": psutil.Process().memory_info().rss / 2**20, **summary(times[backend.name], batch, sequence)}
            result["rows"].append(row)
            result["raw_seconds"][f"{backend.name}|{batch}|{sequence}"] = times[backend.name]
    if peers:
        result["versus_peer"] = versus_peer(result["rows"], peers)
        scratch.cleanup()
    if export is not None:
        from peftstd.runtime.choice import explain
        from peftstd.runtime.folders import ExportFolder

        result["pick"] = explain(ExportFolder(export), threads)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(result))
    chart(result, out / "bench.png")
    table = Table(title=f"peftstd bench: {target} ({threads} threads)")
    for column in ("backend", "batch", "seq", "p50 ms", "p95 ms", "p99 ms", "samples/s", "test metric"):
        table.add_column(column)
    for r in result["rows"]:
        table.add_row(r["backend"], str(r["batch"]), str(r["sequence"]), f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['samples_per_s']:.1f}", f"{r['metric']:.4f}" if r["metric"] is not None else "-")
    console = make_console()
    console.print(table)
    if "pick" in result:
        console.print(f"peftstd serve --artifact auto runs {result['pick']['artifact']} on {result['pick']['runtime']} here: "
                      f"{result['pick']['why']}")
    for row in result.get("versus_peer", []):
        console.print(f"batch {row['batch']} seq {row['sequence']}: peftstd's pick {row['pick_samples_per_s']:.1f} samples/s, "
                      f"{row['ratio']:.2f}x the fastest peer ({row['peer']}, {row['peer_samples_per_s']:.1f})")
    return result


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [f"# peftstd bench: `{result['target']}`", "", f"`{result['command']}`", "",
             f"{machine['cpu']}, {machine['cores']} cores ({', '.join(machine['isa'])}), {result['threads']} threads; "
             f"torch {result['versions'].get('torch')}, onnxruntime {result['versions'].get('onnxruntime')}; {result['created']}", "",
             "| backend | batch | seq | p50 ms | p95 ms | p99 ms | samples/s | tokens/s | size MB | test metric | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        size = f"{r['size_mb']:.1f}" if r["size_mb"] else "-"
        metric = f"{r['metric']:.4f}" if r["metric"] is not None else "-"
        lines.append(f"| {r['backend']} | {r['batch']} | {r['sequence']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {size} | {metric} | {r['device']} |")
    if result.get("versus_peer"):
        lines += ["", "peftstd's pick as `peftstd serve` runs it against the fastest configuration of the peer in each cell:", "",
                  "| batch | seq | pick samples/s | fastest peer | peer samples/s | ratio |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['sequence']} | {r['pick_samples_per_s']:.1f} | {r['peer']} | {r['peer_samples_per_s']:.1f} | "
                  f"**{r['ratio']:.2f}x** |" for r in result["versus_peer"]]
    if "pick" in result:
        pick = result["pick"]
        lines += ["", f"`peftstd serve --artifact auto` runs **{pick['artifact']}** on **{pick['runtime']}** here: {pick['why']}."]
        if pick["timings"]:
            from peftstd.run.card import ranking_table

            lines += ["", *ranking_table(pick["timings"])]
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sequences = sorted({r["sequence"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(sequences), figsize=(5.5 * len(sequences), 4), squeeze=False)
    for ax, sequence in zip(axes[0], sequences):
        for backend in dict.fromkeys(r["backend"] for r in result["rows"]):
            rows = sorted((r for r in result["rows"] if r["backend"] == backend and r["sequence"] == sequence), key=lambda r: r["batch"])
            ax.plot([r["batch"] for r in rows], [r["p50_ms"] for r in rows], "o-", label=backend)
        ax.set(title=f"sequence {sequence}", xlabel="batch", ylabel="p50 latency (ms)", xscale="log", yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(first: Path, second: Path) -> list[dict]:
    """Per (backend, batch, sequence): second's p50 and throughput relative to first's."""
    a, b = (json.loads(Path(p).read_text()) for p in (first, second))
    index = {(r["backend"], r["batch"], r["sequence"]): r for r in a["rows"]}
    out = []
    for r in b["rows"]:
        key = (r["backend"], r["batch"], r["sequence"])
        if key in index:
            out.append({"backend": key[0], "batch": key[1], "sequence": key[2],
                        "p50_ratio": r["p50_ms"] / index[key]["p50_ms"],
                        "throughput_ratio": r["samples_per_s"] / index[key]["samples_per_s"]})
    return out
