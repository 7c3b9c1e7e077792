#!/usr/bin/env python
"""Memory of LoRA training on a float, 8-bit and 4-bit (NF4, QLoRA) base, with torch's and bitsandbytes' 8-bit AdamW.

    python bench/memory.py [--models minilm smollm2] [--steps N] [--out bench/results/memory]

Each configuration is the fine-tune recipe in a fresh process (its own config for the model: minilm_lora_sentiment,
smollm2_lora_chat), the same number of optimizer steps and one validation at the end. Reported from each run's
manifest: the base model's weight bytes as loaded (quantization constants included), the optimizer state bytes,
peak resident memory of the whole process, optimizer steps/s, and the validation metric after the same steps.
On CPU bitsandbytes' 4-/8-bit kernels are slower than float matmuls: this mode buys memory, not speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {  # config, metric read from the last validation, overrides that keep the runs short, default steps
    "minilm": ("minilm_lora_sentiment.yaml", "accuracy", ["model.max_length=64"], 60),
    "smollm2": ("smollm2_lora_chat.yaml", "perplexity", ["generation.samples=1"], 20),
}
CONFIGURATIONS = {
    "float base, AdamW": [],
    "float base, 8-bit AdamW": ["training.optimizer=adamw_8bit"],
    "8-bit base, AdamW": ["model.quantization.bits=8"],
    "4-bit NF4 base, AdamW": ["model.quantization.bits=4"],
    "4-bit NF4 base, 8-bit AdamW (QLoRA)": ["model.quantization.bits=4", "training.optimizer=adamw_8bit"],
}


def run(model: str, overrides: list[str], steps: int, out: Path) -> dict:
    config, metric, short, _ = MODELS[model]
    name = f"{model}-{time.time_ns()}"
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), "--config", str(REPO / "recipes" / "configs" / config),
               f"output.dir={out}", f"output.name={name}", f"training.max_steps={steps}", f"evaluation.every_steps={steps}",
               "output.tensorboard=false", *short, *overrides]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(overrides) or 'float'} failed:\n{done.stderr[-3000:]}")
    manifest = json.loads((out / name / "manifest.json").read_text())
    validation = json.loads((out / name / "metrics.json").read_text())["history"]["validation"][-1]
    training = manifest["training"]
    return {"base_weight_mb": manifest["base_model"]["weight_bytes"] / 2**20, "optimizer_state_mb": training["optimizer"]["state_bytes"] / 2**20,
            "peak_rss_mb": manifest["peak_memory"]["rss_mb"], "steps_per_s": training["optimizer_steps"] / training["train_seconds"],
            "metric": metric, "value": validation[metric], "trainable_parameters": manifest["parameters"]["trainable"]}


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (model, rows) in zip(axes[0], results.items()):
        names = list(rows)
        y = range(len(names))
        ax.barh([i + 0.2 for i in y], [rows[n]["base_weight_mb"] for n in names], 0.4, label="base weights MB")
        ax.barh([i - 0.2 for i in y], [rows[n]["peak_rss_mb"] for n in names], 0.4, label="peak RSS MB")
        ax.set_yticks(list(y), names, fontsize=7)
        ax.invert_yaxis()
        ax.set(title=model, xlabel="MB")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--steps", type=int, help="optimizer steps of every run (default: 60 MiniLM, 20 SmolLM2)")
    parser.add_argument("--out", default="bench/results/memory")
    args = parser.parse_args()

    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models:
            results[model] = {}
            for configuration, overrides in CONFIGURATIONS.items():
                row = results[model][configuration] = run(model, overrides, args.steps or MODELS[model][3], Path(scratch))
                print(f"{model:8} {configuration:38} base {row['base_weight_mb']:7.1f} MB  optimizer {row['optimizer_state_mb']:6.2f} MB  "
                      f"peak RSS {row['peak_rss_mb']:6.0f} MB  {row['steps_per_s']:.2f} steps/s  {row['metric']} {row['value']:.4f}", flush=True)
    from bench.provenance import machine_line, provenance

    report = {**provenance(), "steps": {m: args.steps or MODELS[m][3] for m in args.models}, "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Memory of LoRA training on float, 8-bit and 4-bit bases (bitsandbytes)", "", f"`{report['command']}`", "",
             f"{machine_line(report)}; bitsandbytes "
             f"{report['versions'].get('bitsandbytes', '?')}. Each row: the model's recipe config, its optimizer steps (below), one "
             "validation after them. Base weights: the loaded base model's parameters and buffers as stored (4-bit: packed weights "
             "plus their absmax constants). Peak RSS: the whole recipe process.", ""]
    for model, rows in results.items():
        reference = rows["float base, AdamW"]
        lines += [f"## {model}, {report['steps'][model]} steps", "", f"| configuration | base weights MB | vs float | optimizer state MB | vs AdamW | peak RSS MB | steps/s | "
                  f"speed vs float | validation {reference['metric']} |", "|---|---|---|---|---|---|---|---|---|"]
        for name, row in rows.items():
            lines.append(f"| {name} | {row['base_weight_mb']:.1f} | {reference['base_weight_mb'] / row['base_weight_mb']:.2f}x smaller | "
                         f"{row['optimizer_state_mb']:.2f} | {reference['optimizer_state_mb'] / row['optimizer_state_mb']:.2f}x smaller | "
                         f"{row['peak_rss_mb']:.0f} | {row['steps_per_s']:.2f} | {row['steps_per_s'] / reference['steps_per_s']:.2f}x | {row['value']:.4f} |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    chart(results, out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
