"""Export: ONNX parity gate on held-out data, int8, pruning, predict, stock loaders, broken artifacts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import peftstd
from onnx import numpy_helper


def test_export_writes_the_artifacts_and_a_passing_gate(exported):
    report = json.loads((exported / "export.json").read_text())
    assert report["status"] == "passed"
    for name in ("model.onnx", "model.int8.onnx", "model.int8-static.onnx", "model.int8-nncf.xml", "model.int8-nncf.bin", "config.json",
                 "tokenizer.json", "labels.json"):
        assert (exported / name).is_file(), name
    fp32 = next(r for r in report["gate"]["artifacts"] if r["artifact"] == "fp32")
    assert fp32["parity_passed"] and fp32["max_abs_logit_difference"] <= 1e-4
    assert report["gate"]["examples"] == 24 and report["stages"]["merge"]["max_abs_logit_difference"] < 1e-4
    assert set(report["timings_s"]) >= {"load", "merge", "onnx", "quantize", "verify"}
    assert report["files"]["model.onnx"] and report["ops"]["model.onnx"]


def test_export_card_carries_the_gate_figures(exported):
    import yaml

    card = (exported / "README.md").read_text()
    report = json.loads((exported / "export.json").read_text())
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "onnx" and "peftstd-export" in meta["tags"]
    for record in report["gate"]["artifacts"]:
        assert f"| `{record['file']}` | {record['artifact']} | {record['value']:.4f} |" in card
    assert "Export **passed**" in card
    speed = {(r["backend"], r["batch"]): r for r in report["speed"]["rows"]}
    assert set(speed) == {(name, batch) for name in ("pytorch-fp32", "fp32", "int8-dynamic", "int8-static", "int8-nncf")
                          for batch in (1, 8)}
    fp32 = speed["fp32", 8]
    assert f"| fp32 | {speed['fp32', 1]['p50_ms']:.1f} ({speed['fp32', 1]['speedup_vs_pytorch_fp32']:.2f}x) | {fp32['p50_ms']:.1f} (" in card


def test_cpu_exports_record_and_use_their_session_settings(exported, monkeypatch):
    import onnxruntime as ort

    from peftstd.runtime.inference import onnx_session

    report = json.loads((exported / "export.json").read_text())
    assert report["runtime"] == {"disabled_optimizers": ["SkipLayerNormFusion"]}
    assert report["stages"]["onnx"]["attention"] == "eager" and not report["stages"]["onnx"]["graph_optimization"]["applied"]
    assert "SkipLayerNormalization" not in report["ops"]["model.onnx"]
    asked = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **kw: asked.append(kw.get("disabled_optimizers")) or real(*a, **kw))
    onnx_session(exported / "model.onnx")  # no settings given: those of export.json
    onnx_session(exported / "model.onnx", disabled_optimizers=[])
    assert asked == [["SkipLayerNormFusion"], []]


def test_onnx_axes_are_dynamic(exported):
    graph = onnx.load(str(exported / "model.onnx")).graph
    for graph_input in graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        assert all(d.dim_param for d in dims), graph_input.name


def test_predict_matches_a_bare_onnxruntime_session_and_optimum(exported):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    texts = ["the movie was great and fun", "a dull and tedious plot"]
    result = peftstd("predict", str(exported), *texts)
    assert result.returncode == 0, result.stderr
    predicted = [line.split("\t")[0] for line in result.stdout.strip().splitlines()]

    labels = json.loads((exported / "labels.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(exported)
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    encoded = dict(tokenizer(texts, padding=True, return_tensors="np"))
    bare = session.run(["logits"], {k: v.astype(np.int64) for k, v in encoded.items()})[0]
    assert [labels[i] for i in bare.argmax(-1)] == predicted

    from optimum.onnxruntime import ORTModelForSequenceClassification

    model = ORTModelForSequenceClassification.from_pretrained(exported, file_name="model.onnx")
    logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.detach().numpy()
    assert np.abs(logits - bare).max() < 1e-5


def test_a_weight_perturbed_after_export_fails_the_gate_and_names_the_layer(trained, exported, tmp_path, monkeypatch):
    """The gate runs on what was written: corrupt one weight on its way to disk, the export must fail."""
    from peftstd.export import onnx_export, pipeline
    from peftstd.export.profile import ExportProfile

    original = onnx_export.export_onnx

    def export_then_corrupt(model, tokenizer, out):
        names = original(model, tokenizer, out)
        graph = onnx.load(str(out))
        query = model.bert.encoder.layer[1].output.dense.weight.detach().numpy()

        def distance(init):
            array = numpy_helper.to_array(init)
            return min((np.abs(array - q).max() for q in (query, query.T) if q.shape == array.shape), default=np.inf)

        target = min(graph.graph.initializer, key=distance)
        assert distance(target) == 0.0
        # Random, not constant: a constant shift cancels against LayerNorm's zero-mean output.
        noise = np.random.default_rng(0).normal(0, 0.5, size=tuple(target.dims)).astype(np.float32)
        target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) + noise, target.name))
        onnx.save(graph, str(out))
        return names

    monkeypatch.setattr(onnx_export, "export_onnx", export_then_corrupt)
    code = pipeline.export_run(trained["lora"], tmp_path / "broken", ExportProfile(optimize_graph=False, parity_tolerance=1e-4))
    assert code != 0
    report = json.loads((tmp_path / "broken" / "export.json").read_text())
    assert report["status"] == "failed"
    fp32 = report["gate"]["artifacts"][0]
    assert not fp32["parity_passed"]
    assert fp32["worst_layer"]["layer"] == "bert.encoder.layer.1.output.dense.weight"


def test_bottleneck_adapter_run_exports_in_graph_and_passes(trained, tmp_path):
    result = peftstd("export", str(trained["adapter"]), "--out", str(tmp_path / "adapter"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "adapter" / "export.json").read_text())
    assert "kept in the graph" in report["stages"]["merge"]["how"]
    assert report["gate"]["artifacts"][0]["parity_passed"]


def test_pruning_removes_structure_and_flops(trained, tmp_path):
    result = peftstd("export", str(trained["lora"]), "--prune", "0.4", "--budget", "100", "--out", str(tmp_path / "pruned"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "pruned" / "export.json").read_text())
    prune = report["stages"]["prune"]
    assert 0.38 <= prune["flops_reduction"] <= 0.42
    assert prune["parameters_after"] < prune["parameters_before"]
    assert report["gate"]["artifacts"][0]["parity_passed"]  # the pruned graph matches the pruned PyTorch model


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "does not exist"),
        (["{unfinished}"], "is not a finished run"),
        (["{run}", "--format", "tensorrt"], "--format tensorrt needs --target gpu"),
        (["{run}", "--format", "tensorrt", "--target", "gpu"], "--format tensorrt needs the tensorrt Python package"),
        (["{run}", "--prune", "0.95"], "prune"),
    ],
)
def test_bad_export_requests_are_one_line_errors(trained, tmp_path, args, message):
    (tmp_path / "unfinished").mkdir()
    values = {"missing": tmp_path / "missing", "unfinished": tmp_path / "unfinished", "run": trained["lora"]}
    result = peftstd("export", *[a.format(**values) for a in args], "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_gate_table_prints_whole_names_when_not_a_terminal(exported, capsys):
    """In a log file or CI the table used to be cut to 80 columns (`model.in…`, `int8-dyn…`)."""
    from peftstd.export.pipeline import print_gate

    print_gate(json.loads((exported / "export.json").read_text()), exported)
    table = capsys.readouterr().err
    for name in ("model.int8-static.onnx", "model.int8.onnx", "model.int8-nncf.xml", "int8-dynamic", "int8-static", "int8-nncf", "on openvino"):
        assert name in table, table
    assert "…" not in table


def test_a_failing_artifact_is_not_shipped_when_another_of_its_kind_passed(tmp_path):
    """The shipped NER config: static int8 missed the budget by 2.45 points while dynamic int8 passed, and the user who
    asked for int8 got exit 1 and no usable folder."""
    from peftstd.export.pipeline import ship_passing

    def setup(static_passes_too: bool, dynamic_passes: bool):
        files = {name: tmp_path / f"{name}.onnx" for name in ("fp32", "int8-dynamic", "int8-static")}
        for path in files.values():
            path.write_bytes(b"onnx")
        gate = [{"artifact": "fp32", "passed": True, "metric_passed": True, "drop_points": 0.0},
                {"artifact": "int8-dynamic", "passed": dynamic_passes, "metric_passed": dynamic_passes, "drop_points": 0.4},
                {"artifact": "int8-static", "passed": static_passes_too, "metric_passed": static_passes_too, "drop_points": 2.45}]
        return files, gate

    files, gate = setup(static_passes_too=False, dynamic_passes=True)
    assert ship_passing(gate, dict(files))
    assert not files["int8-static"].exists() and files["int8-dynamic"].exists() and files["fp32"].exists()
    assert gate[2]["shipped"] is False and "2.45" in gate[2]["not_shipped"] and gate[1]["shipped"] is True
    files, gate = setup(static_passes_too=False, dynamic_passes=False)
    assert not ship_passing(gate, dict(files)) and all(p.exists() for p in files.values())  # no int8 passed: diagnosis kept


def test_gate_records_the_bootstrap_interval_of_each_drop(exported):
    report = json.loads((exported / "export.json").read_text())
    for record in report["gate"]["artifacts"]:
        low, high = record["drop_points_ci95"]
        assert low <= high and (low <= record["drop_points"] <= high or record["drop_points"] == 0)
    assert all(r["shipped"] for r in report["gate"]["artifacts"])


def test_quantization_runs_on_a_preprocessed_graph_without_warnings(exported):
    """Symbolic shape inference fails on dynamo graphs; the quantizer then warned dozens of times per export."""
    report = json.loads((exported / "export.json").read_text())
    assert report["stages"]["quantize"]["preprocessing"].startswith(("symbolic", "ONNX shape inference"))


def test_finished_runs_load_without_the_untrained_head_warning(trained, tmp_path):
    result = peftstd("eval", str(trained["lora"]), "--resamples", "10", "--out", str(tmp_path))
    assert result.returncode == 0 and "TRAIN this model" not in result.stderr and "newly initialized" not in result.stderr


def test_a_run_trained_on_relative_paths_exports_and_evaluates_from_anywhere(tiny_model, sentiment_file, tmp_path):
    """The export works in a scratch directory and eval may run elsewhere: the run records its data files absolutely."""
    import shutil

    import yaml
    from conftest import run_recipe, tiny_overrides

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(sentiment_file, work / "train.jsonl")
    result = run_recipe(tiny_overrides(tiny_model, "train.jsonl", "runs", "relative", "training.max_steps=4"), cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    run = work / "runs" / "relative"
    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]["source"]
    assert recorded == str((work / "train.jsonl").resolve())
    exported = peftstd("export", str(run), "--out", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert peftstd("eval", str(run), "--resamples", "20", "--out", str(tmp_path / "eval")).returncode == 0
