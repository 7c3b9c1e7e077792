"""Where an export's time goes: `peftstd export` under cProfile, by stage and by the calls inside the quantize stage.

    python bench/profile_export.py runs/latest --profile export/cpu-int8.yaml --out bench/results

The export is written to a scratch folder and removed. The stage times are the export's own `timings_s`, taken
with the profiler running (which slows Python-heavy stages). The quantize stage is split into ONNX Runtime's
quantizer calls, their calibration, model runs for the search and the per-layer sensitivity pass. Writes
export_profile.{md,json}. Groundwork for issue 32's export-time target.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance import machine_line, provenance, write_report

# (label, file suffix, function name): cumulative time of each, read from the profile
CALLS = [
    ("per-layer sensitivity pass (all of it)", "peftstd/export/quantize.py", "sensitivity"),
    ("ORT quantize_static calls", "onnxruntime/quantization/quantize.py", "quantize_static"),
    ("ORT quantize_dynamic calls", "onnxruntime/quantization/quantize.py", "quantize_dynamic"),
    ("static calibration (activation histograms)", "onnxruntime/quantization/calibrate.py", "collect_data"),
    ("drop on the search split (validation + unseen train)", "peftstd/export/pipeline.py", "search_drop"),
    ("model runs on ONNX Runtime (all of the export)", "peftstd/runtime/inference.py", "onnx_logits"),
    ("shape inference + ORT optimization before quantizing", "peftstd/export/quantize.py", "preprocess"),
    ("gate: bootstrap confidence intervals", "peftstd/evaluation/bootstrap.py", "paired_tests"),
    ("gate: PyTorch reference logits", "peftstd/runtime/inference.py", "torch_logits"),
]


def cumulative(stats: pstats.Stats, suffix: str, function: str) -> tuple[float, int]:
    """Seconds and calls of the outermost frames of `function` in files ending with `suffix`."""
    seconds = calls = 0
    for (filename, _, name), (_, primitive, _, total, _) in stats.stats.items():
        if name == function and filename.endswith(suffix):
            seconds, calls = seconds + total, calls + primitive
    return seconds, calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--profile", default="export/cpu-int8.yaml")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    from peftstd.cli import main as peftstd

    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "export"
        profiler = cProfile.Profile()
        started = time.perf_counter()
        code = profiler.runcall(peftstd, ["export", args.run, "--profile", args.profile, "--out", str(target)])
        wall = time.perf_counter() - started
        record = json.loads((target / "export.json").read_text())
    stats = pstats.Stats(profiler)
    report = {**provenance(), "run": args.run, "profile": args.profile, "exit_code": code, "wall_s": wall,
              "stages_s": record["timings_s"], "quantize": record["stages"].get("quantize", {}),
              "calls": {label: dict(zip(("seconds", "calls"), cumulative(stats, suffix, name))) for label, suffix, name in CALLS}}
    write_report(Path(args.out) / "export_profile", report, markdown(report))
    return 0


def markdown(report: dict) -> str:
    total = sum(report["stages_s"].values())
    lines = [f"# Where the export's time goes: {report['run']} with {report['profile']}", "", f"`{report['command']}`", "",
             machine_line(report), "", f"Wall time under the profiler: {report['wall_s']:.1f} s (exit code {report['exit_code']}).", "",
             "| stage | seconds | share |", "|---|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} | {seconds / total:.0%} |" for stage, seconds in report["stages_s"].items()]
    lines += ["", "Inside (cumulative seconds; the rows overlap, e.g. the sensitivity pass includes quantizer calls and model runs):", "",
              "| what | seconds | calls |", "|---|---|---|"]
    lines += [f"| {label} | {row['seconds']:.1f} | {row['calls']} |" for label, row in report["calls"].items()]
    artifacts = report["quantize"].get("artifacts", {})

    def searched(a: dict) -> str:
        drop = a.get("search_drop_points")
        return "not searched" if drop is None else f"search drop {drop:.2f} points"

    lines += ["", "Artifacts: " + "; ".join(f"{name}: {searched(a)}, kept in float {a.get('kept_in_float') or 'nothing'}"
                                            for name, a in artifacts.items()), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
