"""The artifact and runtime peftstd runs are the ones measured fastest on the machine it runs on (runtime/choice.py):
recorded at export with the CPU they were measured on, followed by `serve` and `predict`, and measured again (once,
then cached) on another CPU. The rankings here are stubbed, so the tests hold on every CPU class."""

from __future__ import annotations

import json
import shutil

import httpx
from conftest import peftstd

from peftstd.runtime import choice
from peftstd.runtime.folders import ExportFolder, Timing


def passed_pairs(export: ExportFolder) -> set[tuple[str, str]]:
    return {(record.artifact, runtime) for record, runtime in choice.passed_on(export, choice.encoder_runtimes())}


def with_ranking(exported, tmp_path, order: list[tuple[str, str]], cpu: str | None = None):
    """A copy of the export whose recorded ranking is `order` (made-up rates), measured on this machine or on `cpu`."""
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    report = json.loads((copy / "export.json").read_text())
    report["choice"]["machine"] = {**choice.machine(), **({"cpu": cpu} if cpu else {})}
    report["choice"]["timings"] = [{"artifact": a, "runtime": r, "samples_per_s": {"1": 100.0 - i, "32": 200.0 - i}, "score": 150.0 - i}
                                   for i, (a, r) in enumerate(order)]
    (copy / "export.json").write_text(json.dumps(report))
    return copy


def test_export_records_every_passed_artifact_timed_on_this_machine(exported):
    export = ExportFolder(exported)
    recorded = export.record.choice
    assert choice.same_machine(recorded.machine, choice.machine()) and recorded.machine["isa"] == choice.machine()["isa"]
    assert {(t.artifact, t.runtime) for t in recorded.timings} == passed_pairs(export) and len(recorded.timings) >= 3
    assert [t.score for t in recorded.timings] == sorted((t.score for t in recorded.timings), reverse=True)
    assert all(set(t.samples_per_s) == set(choice.BATCHES) and min(t.samples_per_s.values()) > 0 for t in recorded.timings)
    assert len(recorded.lengths) == choice.ROWS and max(recorded.lengths) <= export.max_length


def test_serve_and_predict_follow_this_machines_ranking(exported, tmp_path, start):
    """The export's slowest pair put first: `serve` and `predict` run it, without measuring again."""
    recorded = [(t.artifact, t.runtime) for t in ExportFolder(exported).record.choice.timings]
    order = [recorded[-1], *recorded[:-1]]
    copy = with_ranking(exported, tmp_path, order)
    server = start(f"m={copy}")
    listing = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert (listing["artifact"], listing["runtime"]) == order[0]
    server.stop()
    assert "timing" not in server.process.stdout.read()
    predicted = peftstd("predict", str(copy), "a gorgeous, moving film")
    assert predicted.returncode == 0 and "timing" not in predicted.stderr, predicted.stderr[-1500:]
    assert predicted.stdout.split("\t")[0] in ("positive", "negative")


def test_another_cpu_is_measured_once_then_cached(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTSTD_CACHE", str(tmp_path / "cache"))
    copy = with_ranking(exported, tmp_path, [("fp32", "onnxruntime")], cpu="A CPU measured elsewhere")
    export = ExportFolder(copy)
    pairs = sorted(passed_pairs(export))
    stub = [Timing(artifact=a, runtime=r, samples_per_s={1: 10.0 + i, 32: 20.0 + i}, score=15.0 + i) for i, (a, r) in enumerate(pairs)]
    timed = []
    monkeypatch.setattr(choice, "open_predictor", lambda export, record, runtime, *args: (record.artifact, runtime))
    monkeypatch.setattr(choice, "time_predictors", lambda predictors, lengths: timed.append(list(predictors)) or sorted(stub, key=lambda t: -t.score))
    record, runtime = choice.choose_artifact(export)
    assert (record.artifact, runtime) == pairs[-1]  # the stub's fastest, not the other CPU's recorded fp32
    assert len(timed) == 1 and sorted(timed[0]) == pairs
    assert choice.choose_artifact(ExportFolder(copy)) == (record, runtime) and len(timed) == 1  # the cache answered
    assert choice.choose_artifact(export, runtime="onnxruntime")[1] == "onnxruntime"
    named, named_runtime = choice.choose_artifact(export, "fp32")
    assert (named.artifact, named_runtime) == ("fp32", "onnxruntime") and len(timed) == 1  # a named artifact is not timed


def test_bench_says_what_it_would_pick_and_why(exported, tmp_path):
    result = peftstd("bench", str(exported), "--batches", "1", "--sequences", "16", "--repeats", "2",
                     "--backends", "onnxruntime-fp32", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    pick = json.loads((tmp_path / "bench.json").read_text())["pick"]
    fastest = ExportFolder(exported).record.choice.timings[0]
    assert (pick["artifact"], pick["runtime"]) == (fastest.artifact, fastest.runtime) and "measured on" in pick["why"]
    assert f"runs **{fastest.artifact}** on **{fastest.runtime}** here" in (tmp_path / "bench.md").read_text()
    assert "peftstd serve --artifact auto runs" in result.stdout + result.stderr


def test_the_nncf_artifact_runs_on_openvino_only_and_is_checked_there(exported, tmp_path):
    """NNCF's int8 is an OpenVINO IR: judged on OpenVINO by the gate, timed there by the choice, loaded there by
    `check`, and refused by ONNX Runtime paths in one line."""
    export = ExportFolder(exported)
    nncf = export.artifact("int8-nncf")
    assert nncf.runtime == "openvino" and nncf.file == "model.int8-nncf.xml" and (exported / "model.int8-nncf.bin").is_file()
    assert nncf.passed_on("openvino") and not nncf.passed_on("onnxruntime")
    assert ("int8-nncf", "openvino") in {(t.artifact, t.runtime) for t in export.record.choice.timings}
    assert "model.int8-nncf.bin" in export.record.files  # the weights are covered by the sha256 list
    checked = peftstd("check", str(exported))
    assert checked.returncode == 0 and "model.int8-nncf.xml compiles in a bare OpenVINO core" in checked.stdout + checked.stderr
    refused = peftstd("predict", str(exported), "--artifact", "int8-nncf", "--runtime", "onnxruntime", "fine")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "int8-nncf" in refused.stderr, refused.stderr
    served = peftstd("predict", str(exported), "--artifact", "int8-nncf", "fine film")
    assert served.returncode == 0 and served.stdout.split("\t")[0] in ("positive", "negative"), served.stderr[-1500:]
    triton = peftstd("triton", str(exported), "--out", str(tmp_path / "t"), "--artifact", "int8-nncf")
    assert triton.returncode == 2 and "openvino" in triton.stderr, triton.stderr
