#!/usr/bin/env python
"""Training throughput on a CPU without bf16: peftstd's recipe against the best-configured Trainer there (issue 32).

    python bench/train_fp32.py [--emulate-avx2] [--breakdown] [--precision fp32|bf16] [--train-samples 2000] [--rounds 3]
                               [--out bench/results/train_fp32]

Where the CPU has no bf16 (an AVX2-only EPYC), peftstd's `precision: auto` trains in fp32, and the best a Trainer user
can do is the same as on bench/train_throughput.py's bf16 machine without `bf16=True`: DataCollatorWithPadding,
`group_by_length=True`, fp32. Same MiniLM + LoRA job as that script (its settings are imported, not copied).

`--emulate-avx2` runs that CPU class on a machine with AVX-512: oneDNN, PyTorch's own kernels and MKL are capped at
AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, set for every training process) and the
recipe's precision is fp32, what `auto` picks there. Those are the kernels an AVX2-only CPU runs, not its clocks or
caches: the ratio carries over, the samples/s do not. Each configuration runs in a fresh process, alternating.

`--breakdown` adds the recipe with each of its CPU speed-ups turned off (packed dropout masks, the pooled-token last
layer, then both), which says how much of the lead each one gives without bf16. `--precision bf16` runs the same
comparison with both sides in bf16 (a CPU with bf16: the Trainer with `bf16=True`), so the two classes' breakdowns come
from one command.
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
BREAKDOWN = {  # configuration -> the recipe overrides that turn its speed-ups off
    "peftstd-torch-dropout": ("training.cpu_dropout=torch",),
    "peftstd-whole-last-layer": ("training.pooled_token_last_layer=false",),
    "peftstd-neither": ("training.cpu_dropout=torch", "training.pooled_token_last_layer=false"),
}


def run_one(configuration: str, args, scratch: Path) -> dict:
    if configuration.startswith("peftstd"):
        return peftstd_classifier(args.train_samples, scratch, f"training.precision={args.precision}", *BREAKDOWN.get(configuration, ()))
    done = subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "--peer", "trainer-best",
                           *(["--no-bf16"] if args.precision == "fp32" else []), "--train-samples", str(args.train_samples)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulate-avx2", action="store_true", help="cap oneDNN, ATen and MKL at AVX2 (fp32 only)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both sides' precision (bf16 needs a CPU with it)")
    parser.add_argument("--breakdown", action="store_true", help="also run the recipe with each CPU speed-up off")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/train_fp32")
    args = parser.parse_args()
    if args.emulate_avx2 and args.precision == "bf16":
        parser.error("--emulate-avx2 caps the CPU at AVX2, which has no bf16: use --precision fp32")
    if args.emulate_avx2:
        os.environ.update(AVX2_ONLY)  # inherited by every training process started below
    peer = f"trainer-best-{args.precision}"
    runs = ("peftstd", peer, *(BREAKDOWN if args.breakdown else ()))
    results: dict[str, list[dict]] = {c: [] for c in runs}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for configuration in runs if round_index % 2 == 0 else runs[::-1]:
                row = run_one(configuration, args, Path(scratch))
                results[configuration].append(row)
                print(f"round {round_index + 1} {configuration:<24} {row['samples_per_s']:7.1f} samples/s  accuracy {row['accuracy']:.4f}",
                      flush=True)
    mean = {c: {k: sum(r[k] for r in results[c]) / len(results[c]) for k in ("samples_per_s", "accuracy", "peak_rss_mb")} for c in runs}

    def ratio(a: str, b: str) -> tuple[float, list[float]]:
        return (mean[a]["samples_per_s"] / mean[b]["samples_per_s"],
                [x["samples_per_s"] / y["samples_per_s"] for x, y in zip(results[a], results[b])])

    ratios = {f"{a} / {b}": ratio(a, b) for a, b in [("peftstd", peer), *((c, peer) for c in BREAKDOWN if c in runs),
                                                     *(("peftstd", c) for c in BREAKDOWN if c in runs)]}
    bf16_file = REPO / "bench" / "results" / "train_throughput.json"
    bf16_ratio = json.loads(bf16_file.read_text())["ratios"]["peftstd-auto / trainer-best (samples/s)"] if bf16_file.is_file() else None
    report = {**provenance(), "precision": args.precision, "emulated_avx2": args.emulate_avx2,
              "environment": AVX2_ONLY if args.emulate_avx2 else {},
              "settings": {**CLASSIFY, "train_samples": args.train_samples, "rounds": args.rounds}, "runs": results, "mean": mean,
              "ratio": ratios[f"peftstd / {peer}"][0], "ratios": {k: {"mean": m, "per_round": r} for k, (m, r) in ratios.items()},
              "train_throughput_ratio": bf16_ratio}
    cpu_class = ("AVX2 only (emulated on this CPU: " + ", ".join(f"{k}={v}" for k, v in AVX2_ONLY.items()) + ")"
                 if args.emulate_avx2 else "this CPU as it is")
    peer_setup = "DataCollatorWithPadding, group_by_length" + (", bf16=True" if args.precision == "bf16" else "")
    lines = [f"# Training throughput in {args.precision}: peftstd's recipe vs the best-configured Trainer", "", f"`{report['command']}`", "",
             f"{machine_line(report)}. CPU class: {cpu_class}. {args.rounds} alternating rounds, a fresh process each; means.", "",
             f"{args.train_samples} VADER training snippets, 1 epoch, batch {CLASSIFY['batch']}, max length {CLASSIFY['max_length']}, "
             f"LoRA r=16 on all linear layers, both sides in {args.precision}. {peer}: {peer_setup}."
             + (" peftstd-torch-dropout: torch's dropout masks instead of packed ones; peftstd-whole-last-layer: the last layer on every "
                "token; peftstd-neither: both off." if args.breakdown else ""), "",
             "| configuration | samples/s | test accuracy | peak RSS MB |", "|---|---|---|---|"]
    lines += [f"| {c} | {mean[c]['samples_per_s']:.1f} | {mean[c]['accuracy']:.4f} | {mean[c]['peak_rss_mb']:.0f} |" for c in runs]
    lines.append("")
    lines += [f"- {name}: {'**' if i == 0 else ''}{m:.2f}x{'**' if i == 0 else ''} (per round: {', '.join(f'{r:.2f}x' for r in per)})"
              for i, (name, (m, per)) in enumerate(ratios.items())]
    if bf16_ratio is not None:
        lines.append(f"- bench/results/train_throughput.md (peftstd-auto / trainer-best, both in bf16, another day's host): {bf16_ratio:.2f}x")
    write_report(Path(args.out), report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
