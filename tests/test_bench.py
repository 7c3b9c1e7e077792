"""`peftstd bench`: every backend timed on the grid, results written, providers recorded; --compare."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import peftstd


def test_bench_times_every_backend_on_the_grid_and_writes_its_results(exported, tmp_path):
    out = tmp_path / "bench"
    result = peftstd("bench", str(exported), "--batches", "1,4", "--sequences", "16", "--repeats", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    backends = {r["backend"] for r in report["rows"]}
    assert {"pytorch-fp32", "pytorch-int8-dynamic", "torch.compile", "onnxruntime-fp32", "onnxruntime-int8-dynamic"} <= backends
    assert {(r["batch"], r["sequence"]) for r in report["rows"]} == {(1, 16), (4, 16)}
    for row in report["rows"]:
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["samples_per_s"] > 0
        assert len(report["raw_seconds"][f"{row['backend']}|{row['batch']}|{row['sequence']}"]) == 3
    onnx_rows = [r for r in report["rows"] if r["backend"].startswith("onnxruntime")]
    assert all("CPUExecutionProvider" in r["device"] and r["metric"] is not None for r in onnx_rows)
    assert report["machine"]["cpu"] and report["versions"]["onnxruntime"]
    assert (out / "bench.md").read_text().count("\n") > len(report["rows"])
    assert (out / "bench.png").stat().st_size > 1000

    compared = peftstd("bench", "--compare", str(out / "bench.json"), str(out / "bench.json"))
    assert compared.returncode == 0
    assert "p50 x1.00" in compared.stdout and "throughput x1.00" in compared.stdout


def test_export_speed_script_of_make_demo_times_the_run_and_its_export(trained, exported, tmp_path):
    """`make demo` ends with bench/export_speed.py; it broke once unnoticed (an import renamed away)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "speed"
    result = subprocess.run([sys.executable, str(repo / "bench" / "export_speed.py"), str(trained["lora"]), str(exported),
                             "--out", str(out), "--repeats", "2", "--sequence", "16", "--batches", "1", "--no-optimum"],
                            capture_output=True, text=True, cwd=repo)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    backends = {r["backend"] for r in report["rows"]}
    assert {"pytorch-fp32", "pytorch-bf16", "lora/fp32", "lora/int8-dynamic"} <= backends, backends


def test_bench_refuses_what_it_cannot_time(tmp_path):
    result = peftstd("bench", str(tmp_path))
    assert result.returncode == 2 and "neither a finished run" in result.stderr
    bad = peftstd("bench", str(tmp_path), "--batches", "1,x")
    assert bad.returncode == 2 and "--batches takes comma-separated positive integers" in bad.stderr


def test_gpu_script_fetches_the_vader_sdist_by_name_and_checks_it():
    """A hard-coded files.pythonhosted.org URL bypasses pip's configured index, mirror or proxy."""
    script = (Path(__file__).resolve().parents[1] / "bench" / "gpu.sh").read_text()
    assert "files.pythonhosted.org" not in script
    assert "vaderSentiment==3.3.2" in script and "sha256sum -c" in script
