"""`peftstd export RUN`: load -> merge -> prune -> ONNX -> quantize -> (TensorRT) -> verify.

The export folder is built under a temporary name and renamed into place, so a crash never leaves
half an artifact. A failed gate still writes the folder, with `export.json` marked failed, and exits 1.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

from peftstd.errors import ConfigError, UserError
from peftstd.export.profile import ExportProfile
from peftstd.tasks import GENERATIVE_TASKS, TASK_METRICS

GATE_FAILED_EXIT_CODE = 1
EXPORTABLE_TASKS = tuple(TASK_METRICS)  # every fine-tune task


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages:
    """A progress line per stage with its wall time and the peak memory by its end; both go into export.json."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        print(f"[export] {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - started
        self.peak_rss_mb[name] = peak_rss_mb()
        print(f"[export] {name} done in {self.timings[name]:.1f} s (peak memory {self.peak_rss_mb[name]:.0f} MB)", file=sys.stderr, flush=True)


def check_request(run_dir: Path, profile: ExportProfile) -> None:
    """Everything a user can get wrong, before any model loads."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {str(run_dir)!r} does not exist")
    from peftstd.runtime.folders import RunFolder

    task = RunFolder(run_dir).task
    if task not in EXPORTABLE_TASKS:
        raise UserError(f"peftstd export supports {', '.join(EXPORTABLE_TASKS)} runs; this run is {task}")
    if profile.format == "gguf":
        if task != "causal-lm":
            raise UserError(f"--format gguf supports causal-lm runs (llama.cpp and Ollama run decoder models); this run is {task}")
        if profile.int8 or profile.fp16 or profile.prune or profile.target != "cpu":
            raise UserError("--format gguf takes its quantization from gguf_types (e.g. --gguf-types q8_0 q4_k_m); "
                            "--int8, --fp16, --prune and --target gpu apply to ONNX exports")
        from peftstd.runtime.gguf_model import llama_cpp

        llama_cpp()  # installed, or a one-line error saying how
        return
    if profile.prune and task != "text-classification":
        raise UserError(f"--prune supports text-classification runs so far; this run is {task}")
    if task in GENERATIVE_TASKS and (profile.target != "cpu" or profile.fp16 or profile.format != "onnx"):
        raise UserError(f"{task} runs export to ONNX for --target cpu (fp32, and weight-only int8 with --int8) so far; "
                        "GPU, fp16 and TensorRT exports cover the classification and QA tasks")
    if profile.format == "tensorrt":
        if profile.target != "gpu":
            raise ConfigError("--format tensorrt needs --target gpu")
        from peftstd.export.tensorrt import missing_requirements

        missing = missing_requirements()
        if missing:
            raise UserError(f"--format tensorrt needs {' and '.join(missing)}; use --format onnx on this machine")


@contextlib.contextmanager
def scratch_directory():
    """A temporary working directory for the whole export, removed afterwards.

    ONNX Runtime's quantization tools save intermediate models with external data under uuid file
    names relative to the current directory; without this they pile up in the user's folder.
    """
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="peftstd-export-") as scratch:
        os.chdir(scratch)
        try:
            yield Path(scratch)
        finally:
            os.chdir(previous)


def export_run(run_dir: Path, out_dir: Path, profile: ExportProfile) -> int:
    """Run every stage for `run_dir` into `out_dir`; 0 when the gate passed, 1 when it failed."""
    run_dir, out_dir = Path(run_dir).resolve(), Path(out_dir).resolve()
    with scratch_directory():
        return run_stages(run_dir, out_dir, profile)


def run_stages(run_dir: Path, out_dir: Path, profile: ExportProfile) -> int:
    from peftstd.basics.hardware import hardware
    from peftstd.export.merge import max_abs_difference, merge
    from peftstd.export.onnx_export import export_onnx, op_histogram, optimize_graph
    from peftstd.export.verify import judge, metric_points, worst_initializer
    from peftstd.runtime.inference import torch_logits
    from peftstd.runtime.load import load_run
    from peftstd.runtime.taskdata import run_splits, task_data
    from peftstd.tasks import get_task

    check_request(run_dir, profile)
    stages = Stages()
    report: dict = {"source_run": str(run_dir), "source_manifest": str(run_dir / "manifest.json"),
                    "profile": profile.model_dump(), "stages": {}}

    with stages.stage("load"):
        loaded = load_run(run_dir)
        cfg, splits = run_splits(run_dir, loaded.manifest)
        task = get_task(loaded.manifest["task"]["type"], loaded.labels, loaded.manifest["task"].get("settings"))
        max_length = cfg.model.max_length
        quantization = loaded.manifest["base_model"].get("quantization")  # a QLoRA run: dequantized before merging
        report["stages"]["load"] = {"base_quantized": bool(quantization), "quantization": quantization, "method": loaded.manifest["method"]["name"]}
        report["task_settings"] = loaded.manifest["task"].get("settings")
    if profile.format == "gguf":
        from peftstd.export.gguf_export import export_gguf

        def fill_gguf(folder: Path) -> int:
            passed = export_gguf(loaded, cfg, splits, task, profile, stages, report, folder)
            return finish(folder, report, passed, task, max_length, loaded.labels, report["stages"]["gguf"]["tensor_types"], stages,
                          run_dir, splits.test)

        return write_export(out_dir, report, fill_gguf)
    if task.generative:
        from peftstd.export.generative import export_generative, folder_ops

        def fill_generative(folder: Path) -> int:
            passed = export_generative(loaded, cfg, splits, task, profile, stages, report, folder)
            return finish(folder, report, passed, task, max_length, loaded.labels, folder_ops(folder), stages, run_dir, splits.test)

        return write_export(out_dir, report, fill_generative)

    with stages.stage("data"):
        def data_of(rows):
            return task_data(rows, loaded.labels, loaded.tokenizer, max_length, task)

        test, validation = data_of(splits.test), data_of(splits.validation)
        calibration = data_of(splits.train[: profile.calibration_samples])
        unseen = splits.train[profile.calibration_samples : profile.calibration_samples + profile.search_train_samples]
        search = data_of(splits.validation + unseen)

    def logits_of(model, data):
        return torch_logits(model, loaded.tokenizer, data, profile.batch_size, max_length)

    with stages.stage("merge"):
        # the gate's reference stays the run's own (quantized) model: trained_test_logits below
        exported, how = merge(loaded.model, task.load_model(loaded.manifest["base_model"]["path"], loaded.labels) if quantization else None)
        trained_test_logits = logits_of(loaded.model, test)
        merged_test_logits = logits_of(exported, test) if exported is not loaded.model else trained_test_logits
        report["stages"]["merge"] = {"how": how, "max_abs_logit_difference": max_abs_difference(trained_test_logits, merged_test_logits)}

    if profile.prune:
        from peftstd.export.prune import prune_model

        with stages.stage("prune"):
            importance = data_of(splits.train[: profile.importance_samples])
            exported, report["stages"]["prune"] = prune_model(exported, loaded.tokenizer, importance, profile.prune, max_length)
            report["stages"]["prune"]["metric_after"] = metric_points(task, logits_of(exported, validation), validation.label_ids) / 100
    # The PyTorch model the ONNX graph is exported from: fp32 parity is judged against its logits.
    exported_test_logits = logits_of(exported, test) if profile.prune else merged_test_logits

    def fill(folder: Path) -> int:
        with stages.stage("onnx"):
            raw = folder / "model.raw.onnx"
            attention = export_onnx(exported, loaded.tokenizer, raw)
            optimization = optimize_graph(raw, folder / "model.onnx", exported.config) if profile.offline_fusions else {"applied": False}
            if optimization["applied"]:
                raw.unlink()
            else:
                raw.rename(folder / "model.onnx")
            report["stages"]["onnx"] = {"exporter": "torch.onnx.export(dynamo=True)", "dynamic_axes": ["batch", "sequence"],
                                        "attention": attention, "graph_optimization": optimization}
        report["runtime"] = {"disabled_optimizers": profile.session_disabled_optimizers}
        artifacts = {"fp32": folder / "model.onnx"}

        if profile.int8 or profile.fp16:
            with stages.stage("quantize"):
                from peftstd.export.quantize import quantize_artifacts

                artifacts.update(quantize_artifacts(folder, artifacts["fp32"], profile, calibration, search, task,
                                                    loaded, max_length, report))

        if profile.format == "tensorrt":
            from peftstd.export.tensorrt import build_engine

            with stages.stage("tensorrt"):
                source = artifacts.get("int8-qdq", artifacts.get("fp16", artifacts["fp32"]))
                report["stages"]["tensorrt"] = build_engine(source, folder / "model.plan", int8="int8-qdq" in artifacts)

        with stages.stage("verify"):
            import importlib.util

            from peftstd.runtime.engines import artifact_files, open_engine, runtime_of
            from peftstd.runtime.inference import engine_logits

            openvino = profile.target == "cpu" and importlib.util.find_spec("openvino") is not None
            reference = metric_points(task, trained_test_logits, test.label_ids)
            gate = []
            for name, path in artifacts.items():
                # on the runtime its format runs on: NNCF's OpenVINO IR on OpenVINO, ONNX files on ONNX Runtime
                engine = open_engine(path, runtime_of(path), disabled_optimizers=profile.session_disabled_optimizers)
                logits = engine_logits(engine, loaded.tokenizer, test, profile.batch_size, max_length)
                record = judge(name, logits, reference, exported_test_logits if name == "fp32" else None,
                               task, test.label_ids, profile.budget, profile.parity_for(generative=False))
                record["file"], record["runtime"] = path.name, runtime_of(path)
                if task.name in ("text-classification", "token-classification"):
                    record["drop_points_ci95"] = drop_interval(task, trained_test_logits, logits, test.label_ids)
                if name == "fp32" and not record["parity_passed"]:
                    record["worst_layer"] = worst_initializer(path, exported)
                if openvino and path.suffix == ".onnx" and name != "fp16":
                    # The same file on OpenVINO, judged the same way; `peftstd serve --runtime openvino` needs it passed.
                    ov_logits = engine_logits(open_engine(path, "openvino"), loaded.tokenizer, test, profile.batch_size, max_length)
                    ov = judge(name, ov_logits, reference, exported_test_logits if name == "fp32" else None,
                               task, test.label_ids, profile.budget, profile.parity_for(generative=False))
                    record["openvino"] = {k: v for k, v in ov.items() if k != "artifact"}
                gate.append(record)
            report["gate"] = {"split": "test", "examples": len(splits.test), "metric": task.primary_metric, "trained_metric": reference / 100,
                              "budget_points": profile.budget, "parity_tolerance": profile.parity_for(generative=False), "artifacts": gate}
            passed = ship_passing(gate, artifacts)

        if profile.speed_check and profile.format == "onnx":
            from peftstd.export.speed import speed_check

            with stages.stage("speed"):
                report["speed"] = speed_check(exported, loaded.tokenizer, test.texts, artifacts, max_length,
                                              profile.session_disabled_optimizers)
                report["machine"] = hardware()

        exported.config.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        report["sizes_mb"] = {p.name: sum(f.stat().st_size for f in artifact_files(p)) / 2**20 for p in artifacts.values()}
        return finish(folder, report, passed, task, max_length, loaded.labels,
                      {p.name: op_histogram(p) for p in artifacts.values() if p.suffix == ".onnx"}, stages, run_dir, splits.test)

    return write_export(out_dir, report, fill)


def artifact_kind(name: str) -> str:
    """What a user asked for: fp32, int8 (dynamic, static or QDQ) or fp16."""
    return "int8" if name.startswith("int8") else name


def ship_passing(gate: list[dict], artifacts: dict[str, Path]) -> bool:
    """True when every requested kind has an artifact that passed the gate. Then the artifacts that failed are
    removed from the folder (their gate records stay, with the reason): a user who asked for int8 gets the int8
    artifact that passed instead of exit 1 and nothing usable. When a kind has none, everything stays for
    diagnosis and the export fails."""
    from peftstd.runtime.engines import artifact_files

    kinds = {artifact_kind(r["artifact"]) for r in gate}
    if not all(any(r["passed"] for r in gate if artifact_kind(r["artifact"]) == kind) for kind in kinds):
        return False
    for record in gate:
        record["shipped"] = record["passed"]
        if not record["passed"]:
            for removed in artifact_files(artifacts.pop(record["artifact"])):
                removed.unlink()
            why = f"drop of {record['drop_points']:.2f} points exceeds the budget" if not record["metric_passed"] else "parity failed"
            record["not_shipped"] = f"{why}; another {artifact_kind(record['artifact'])} artifact passed"
    return True


def drop_interval(task, trained_logits, logits, label_ids, resamples: int = 300) -> list[float]:
    """95% paired-bootstrap interval of an artifact's drop in points against the trained model on the same test
    examples: a point estimate on a few hundred examples is noise as often as damage."""
    import numpy as np

    from peftstd.evaluation.bootstrap import paired_test

    def metric(values):
        if task.primary_metric == "accuracy":  # the mean of the resample's per-example hits: no metric call per resample
            hits = (task.predict(values) == label_ids).astype(np.float64)
            return lambda idx: float(hits[idx].mean())
        return lambda idx: task.metrics(values[idx], label_ids[idx])[task.primary_metric]

    low, high = paired_test(metric(logits), metric(trained_logits), len(label_ids), resamples)["ci95"]
    return [100 * low, 100 * high]


def finish(folder: Path, report: dict, passed: bool, task, max_length: int, labels: list[str], ops: dict, stages: Stages,
           run_dir: Path, test_rows: list) -> int:
    """labels.json, monitor.json (drift reference, for a passed export), export.json (with the sha256 of every
    file) and the export card; the exit code."""
    from peftstd.basics.atomic import write_json, write_text
    from peftstd.basics.hashing import sha256_file
    from peftstd.run.card import render_export_card
    from peftstd.runtime.choice import measure_export, reason
    from peftstd.runtime.drift import input_of, write_reference
    from peftstd.runtime.folders import ExportFolder

    write_json(folder / "labels.json", labels)
    report.update({"status": "passed" if passed else "failed", "task": task.name,
                   "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "max_length": max_length, "ops": ops})
    if passed:
        write_json(folder / "export.json", report)  # read by the predictors timed and the one that builds the reference; rewritten below
        if not task.generative:
            with stages.stage("choice"):  # what `serve --artifact auto` runs on this machine, measured (runtime/choice.py)
                choice = measure_export(ExportFolder(folder), [input_of(row) for row in test_rows])
            if choice is not None:
                report["choice"] = choice.model_dump(mode="json")
                print(f"[export] fastest here: {reason(choice)}", file=sys.stderr, flush=True)
                write_json(folder / "export.json", report)
        with stages.stage("monitor"):
            write_reference(folder, test_rows)
    report.update({"timings_s": stages.timings, "peak_rss_mb": stages.peak_rss_mb,
                   "files": {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
                             if p.is_file() and p.name != "export.json"}})
    write_json(folder / "export.json", report)
    run_card = run_dir / "README.md"
    write_text(folder / "README.md", render_export_card(report, run_card.read_text() if run_card.is_file() else None))
    return 0 if passed else GATE_FAILED_EXIT_CODE


def write_export(out_dir: Path, report: dict, fill) -> int:
    """`fill` builds the export in a temporary folder that then replaces `out_dir`; the gate table follows."""
    from peftstd.basics.atomic import replace_dir

    result = {}
    replace_dir(out_dir, lambda folder: result.setdefault("code", fill(folder)))
    print_gate(report, out_dir)
    return result["code"]


def print_gate(report: dict, out_dir: Path) -> None:
    from rich.table import Table

    from peftstd.basics.console import console as make_console

    gate = report["gate"]
    table = Table(title=f"export gate on {gate['examples']} held-out test examples (trained {gate['artifacts'][0]['metric']} {gate['trained_metric']:.4f})")
    change = "rise (%)" if gate["metric"] == "perplexity" else "drop (points)"
    for column in ("artifact", "file", gate["metric"], change, "95% CI", "max |Δlogit|", "size MB", "result", "on openvino"):
        table.add_column(column)
    for record in gate["artifacts"]:
        ov, ci = record.get("openvino"), record.get("drop_points_ci95")
        size = report["sizes_mb"].get(record["file"])
        result = ("pass" if record["passed"] else "FAIL") + ("" if record.get("shipped", True) else ", removed")
        table.add_row(record["artifact"], record["file"], f"{record['value']:.4f}", f"{record['drop_points']:+.2f}",
                      f"{ci[0]:+.2f} to {ci[1]:+.2f}" if ci else "-",
                      f"{record['max_abs_logit_difference']:.1e}" if "max_abs_logit_difference" in record else "-",
                      f"{size:.1f}" if size is not None else "-", result,
                      f"{ov['value']:.4f} {'pass' if ov['passed'] else 'FAIL'}" if ov else "-")
    console = make_console()
    console.print(table)
    for record in gate["artifacts"]:
        if not record.get("shipped", True):
            console.print(f"peftstd: {record['artifact']} not shipped: {record['not_shipped']}")
        elif not record["passed"]:
            worst = record.get("worst_layer")
            why = f"; worst layer {worst['layer']} (max |Δ| {worst['max_abs_difference']:.2e})" if worst else ""
            console.print(f"peftstd: export gate failed for {record['artifact']}: drop {record['drop_points']:.2f} points"
                          f" (budget {record.get('budget_points', gate['budget_points'])})"
                          + (f", max |Δlogit| {record['max_abs_logit_difference']:.2e}" if "max_abs_logit_difference" in record else "") + why)
    console.print(f"export {report['status']}: {out_dir}")
