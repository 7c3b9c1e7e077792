#!/usr/bin/env python
"""Training throughput: peftstd's fine-tune recipe against the stock Hugging Face route, alternating.

    python bench/train_throughput.py [--train-samples 2000] [--rounds 2] [--out bench/results/train_throughput]

Both sides train the same LoRA (r=16, alpha=32, dropout 0.05, all attention and dense layers) on the
same MiniLM, the same VADER train/test split, batch 32, max length 64, one epoch, lr 5e-4. The peer is
transformers' `Trainer` + peft configured as its documentation recommends for this job: `DataCollatorWithPadding`
(dynamic padding), `group_by_length=True`, `bf16=True` ("trainer-best", the comparison that counts); its
text-classification example's defaults (run_glue: padding to max length, fp32) are a second row, labelled as such.
peftstd runs its recipe as users do (dynamic padding, length grouping, `precision: auto`). Each configuration runs
in a fresh process; the order alternates by round. Reports samples/s, peak RSS and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.plots import rounds_chart
from bench.provenance import machine_line, provenance

COMMON = {"rank": 16, "alpha": 32, "dropout": 0.05, "batch": 32, "max_length": 64, "lr": 5e-4, "epochs": 1}


def stock_trainer(train_samples: int, best: bool) -> dict:
    """transformers Trainer + peft in this process: `best` (dynamic padding, length grouping, bf16 autocast) or
    run_glue's defaults (padding="max_length", fp32)."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging

    from peftstd.config import load_config
    from peftstd.data import load_splits
    from peftstd.models import resolve_model

    logging.set_verbosity_error()
    splits = load_splits(load_config(None).data)
    train, test = splits.train[:train_samples], splits.test
    labels = sorted({r.label for r in splits.train})
    path = resolve_model("minilm").path
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(rows):
        enc = tokenizer([r.text for r in rows], padding=False if best else "max_length", truncation=True, max_length=COMMON["max_length"])
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "token_type_ids": enc["token_type_ids"][i],
                 "labels": labels.index(r.label)} for i, r in enumerate(rows)]

    torch.manual_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=COMMON["rank"], lora_alpha=COMMON["alpha"],
                                             lora_dropout=COMMON["dropout"], target_modules="all-linear"))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, per_device_train_batch_size=COMMON["batch"], per_device_eval_batch_size=64,
                                 learning_rate=COMMON["lr"], num_train_epochs=COMMON["epochs"], warmup_ratio=0.06, weight_decay=0.01,
                                 bf16=best, group_by_length=best, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                                 seed=42, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=encode(train), eval_dataset=encode(test),
                          data_collator=DataCollatorWithPadding(tokenizer) if best else None)
        train_metrics = trainer.train().metrics
        predictions = trainer.predict(encode(test))
    accuracy = float((np.argmax(predictions.predictions, -1) == predictions.label_ids).mean())
    return {"samples_per_s": train_metrics["train_samples_per_second"], "accuracy": accuracy,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peftstd_recipe(train_samples: int, precision: str, out: Path) -> dict:
    name = f"{precision}-{time.time_ns()}"
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), f"output.dir={out}", f"output.name={name}",
               f"data.max_train_samples={train_samples}", f"training.precision={precision}", f"model.max_length={COMMON['max_length']}",
               f"training.batch_size={COMMON['batch']}", f"training.learning_rate={COMMON['lr']}", f"training.epochs={COMMON['epochs']}",
               "training.scheduler=linear", "evaluation.every_steps=100000", "output.tensorboard=false"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    manifest = json.loads((out / name / "manifest.json").read_text())
    return {"samples_per_s": manifest["training"]["train_samples_per_second"], "precision": manifest["training"]["precision"],
            "accuracy": json.loads((out / name / "metrics.json").read_text())["test"]["accuracy"],
            "peak_rss_mb": manifest["peak_memory"]["rss_mb"], "mfu": manifest["training"].get("flops", {}).get("mfu")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench/results/train_throughput")
    parser.add_argument("--stock", choices=["best", "defaults"], help=argparse.SUPPRESS)  # internal: one stock run
    args = parser.parse_args()
    if args.stock:
        print(json.dumps(stock_trainer(args.train_samples, args.stock == "best")))
        return

    configurations = ["peftstd-auto", "trainer-best", "trainer-defaults"]
    results: dict[str, list[dict]] = {c: [] for c in configurations}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = configurations if round_index % 2 == 0 else configurations[::-1]
            for configuration in order:
                side, setting = configuration.split("-", 1)
                if side == "trainer":
                    done = subprocess.run([sys.executable, __file__, "--stock", setting, "--train-samples", str(args.train_samples)],
                                          check=True, capture_output=True, text=True)
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                else:
                    row = peftstd_recipe(args.train_samples, setting, Path(scratch))
                results[configuration].append(row)
                print(f"round {round_index + 1} {configuration:<14} {row['samples_per_s']:7.1f} samples/s  accuracy {row['accuracy']:.4f}  "
                      f"peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)

    def mean(configuration, key):
        return sum(r[key] for r in results[configuration]) / len(results[configuration])

    summary = {c: {k: mean(c, k) for k in ("samples_per_s", "accuracy", "peak_rss_mb")} for c in configurations}
    report = {**provenance(), "settings": {**COMMON, "train_samples": args.train_samples, "rounds": args.rounds},
              "runs": results, "mean": summary,
              "ratios": {"peftstd-auto / trainer-best": summary["peftstd-auto"]["samples_per_s"] / summary["trainer-best"]["samples_per_s"],
                         "peftstd-auto / trainer-defaults (run_glue, not a fair peer)":
                             summary["peftstd-auto"]["samples_per_s"] / summary["trainer-defaults"]["samples_per_s"]},
              "per_round_ratio_vs_best": [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(results["peftstd-auto"], results["trainer-best"])]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Training throughput: peftstd recipe vs the best-configured transformers Trainer + peft", "", f"`{report['command']}`", "",
             f"{machine_line(report)}; "
             f"{args.train_samples} training snippets, 1 epoch, batch 32, max length 64, LoRA r=16 on all linear layers; "
             f"{args.rounds} alternating rounds, means below. trainer-best: DataCollatorWithPadding, group_by_length, bf16 "
             "(the peer that counts); trainer-defaults: run_glue's padding to max length in fp32, for reference only.", "",
             "| configuration | samples/s | test accuracy | peak RSS MB | MFU (recipe's own count) |", "|---|---|---|---|---|"]
    for c in configurations:
        mfu = [r["mfu"] for r in results[c] if r.get("mfu") is not None]
        lines.append(f"| {c} | {summary[c]['samples_per_s']:.1f} | {summary[c]['accuracy']:.4f} | {summary[c]['peak_rss_mb']:.0f} | "
                     + (f"{sum(mfu) / len(mfu):.1%}" if mfu else "not counted") + " |")
    lines += [""] + [f"- {k}: **{v:.2f}x**" for k, v in report["ratios"].items()]
    lines.append(f"- per round, peftstd-auto / trainer-best: {', '.join(f'{r:.2f}x' for r in report['per_round_ratio_vs_best'])}")
    best_ratio = report["ratios"]["peftstd-auto / trainer-best"]
    lines.append(f"- target 1.5x trainer-best at equal or better accuracy: {'met' if best_ratio >= 1.5 else f'missed by {1.5 - best_ratio:.2f}x'}; "
                 "where a step's time goes: [train_profile.md](train_profile.md); what was tried: bench/README.md")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    rounds_chart(out.with_suffix(".png"), results, "samples_per_s", "samples/s",
                 f"MiniLM + LoRA, peftstd-auto / trainer-best {report['ratios']['peftstd-auto / trainer-best']:.2f}x")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
