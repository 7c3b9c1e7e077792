#!/usr/bin/env python
"""Training throughput on a CPU without bf16: peftstd's recipe against the best-configured Trainer there (issue 32).

    python bench/train_fp32.py [--emulate-avx2] [--train-samples 2000] [--rounds 3] [--out bench/results/train_fp32]

Where the CPU has no bf16 (an AVX2-only EPYC), peftstd's `precision: auto` trains in fp32, and the best a Trainer user
can do is the same as on bench/train_throughput.py's bf16 machine without `bf16=True`: DataCollatorWithPadding,
`group_by_length=True`, fp32. Same MiniLM + LoRA job as that script (its settings are imported, not copied).

`--emulate-avx2` runs that CPU class on a machine with AVX-512: oneDNN, PyTorch's own kernels and MKL are capped at
AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, set for every training process) and the
recipe's precision is fp32, what `auto` picks there. Those are the kernels an AVX2-only CPU runs, not its clocks or
caches: the ratio carries over, the samples/s do not. Each configuration runs in a fresh process, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance import machine_line, provenance, write_report
from train_throughput import CLASSIFY, peftstd_classifier

AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
RUNS = ("peftstd", "trainer-best-fp32")


def run_one(configuration: str, args, scratch: Path) -> dict:
    if configuration == "peftstd":
        return peftstd_classifier(args.train_samples, scratch, *(["training.precision=fp32"] if args.emulate_avx2 else []))
    done = subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "--peer", "trainer-best", "--no-bf16",
                           "--train-samples", str(args.train_samples)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulate-avx2", action="store_true", help="cap oneDNN, ATen and MKL at AVX2 and train in fp32")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/train_fp32")
    args = parser.parse_args()
    if args.emulate_avx2:
        os.environ.update(AVX2_ONLY)  # inherited by every training process started below
    results: dict[str, list[dict]] = {c: [] for c in RUNS}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for configuration in RUNS if round_index % 2 == 0 else RUNS[::-1]:
                row = run_one(configuration, args, Path(scratch))
                results[configuration].append(row)
                print(f"round {round_index + 1} {configuration:<18} {row['samples_per_s']:7.1f} samples/s  accuracy {row['accuracy']:.4f}"
                      f"  {row.get('precision', 'fp32')}", flush=True)
    mean = {c: {k: sum(r[k] for r in results[c]) / len(results[c]) for k in ("samples_per_s", "accuracy", "peak_rss_mb")} for c in RUNS}
    per_round = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(results["peftstd"], results["trainer-best-fp32"])]
    ratio = mean["peftstd"]["samples_per_s"] / mean["trainer-best-fp32"]["samples_per_s"]
    bf16_file = REPO / "bench" / "results" / "train_throughput.json"
    bf16_ratio = json.loads(bf16_file.read_text())["ratios"]["peftstd-auto / trainer-best (samples/s)"] if bf16_file.is_file() else None
    report = {**provenance(), "emulated_avx2": args.emulate_avx2, "environment": AVX2_ONLY if args.emulate_avx2 else {},
              "settings": {**CLASSIFY, "train_samples": args.train_samples, "rounds": args.rounds}, "runs": results, "mean": mean,
              "ratio": ratio, "per_round": per_round, "bf16_machine_ratio": bf16_ratio}
    cpu_class = ("AVX2 only (emulated on this CPU: " + ", ".join(f"{k}={v}" for k, v in AVX2_ONLY.items()) + ")"
                 if args.emulate_avx2 else "this CPU as it is")
    lines = ["# Training throughput without bf16: peftstd's recipe vs the best-configured Trainer", "", f"`{report['command']}`", "",
             f"{machine_line(report)}. CPU class: {cpu_class}. {args.rounds} alternating rounds, a fresh process each; means.", "",
             f"{args.train_samples} VADER training snippets, 1 epoch, batch {CLASSIFY['batch']}, max length {CLASSIFY['max_length']}, "
             "LoRA r=16 on all linear layers, both sides in fp32. trainer-best-fp32: DataCollatorWithPadding, group_by_length.", "",
             "| configuration | samples/s | test accuracy | peak RSS MB |", "|---|---|---|---|"]
    lines += [f"| {c} | {mean[c]['samples_per_s']:.1f} | {mean[c]['accuracy']:.4f} | {mean[c]['peak_rss_mb']:.0f} |" for c in RUNS]
    lines += ["", f"- peftstd / trainer-best-fp32: **{ratio:.2f}x** (per round: {', '.join(f'{r:.2f}x' for r in per_round)})"]
    if bf16_ratio is not None:
        lines.append(f"- on the bf16 machine (bench/results/train_throughput.md, both sides in bf16): {bf16_ratio:.2f}x")
    write_report(Path(args.out), report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
