#!/usr/bin/env python
"""Where a training step's time goes: `torch.profiler` over steps of the default recipe (MiniLM + LoRA on VADER,
batch 32, max length 64, bf16 autocast where supported), built from the recipe's own parts.

    python bench/profile_training.py [--steps 20] [--trainer] [--out bench/results/train_profile.md] [overrides...]

Writes the operators by self CPU time and the share of the step each family takes (matmuls, autocast copies,
attention, optimizer, the rest), the input for making the recipe faster (issue 16, item 3). `--trainer` profiles the
same steps of bench/train_throughput.py's best-configured transformers Trainer instead (in the precision the
overrides give the recipe), so the two step budgets compare family by family (issue 32, item 4).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAMILIES = {  # operator name fragments -> family, first match wins
    "matmul (mm/addmm/bmm/linear)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    "attention (sdpa)": ("scaled_dot_product", "_flash_attention"),
    "dtype casts (autocast copies)": ("aten::_to_copy", "aten::copy_", "aten::to"),
    "optimizer (AdamW)": ("Optimizer.step", "_foreach", "adamw"),
    "dropout": ("dropout", "bernoulli"),
    "layer norm / gelu / softmax": ("layer_norm", "gelu", "softmax"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="bench/results/train_profile.md")
    parser.add_argument("--trainer", action="store_true", help="profile the best-configured Trainer's steps instead of the recipe's")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. training.cpu_dropout=torch")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from peftstd.config import load_config
    from peftstd.data import load_splits
    from peftstd.methods import Wrapping, get_method
    from peftstd.models import resolve_model
    from peftstd.tasks import get_task
    from peftstd.training.batching import train_loader
    from peftstd.training.dropout import use_packed_dropout
    from peftstd.training.optim import build_optimizer
    from peftstd.training.pooled_token import use_pooled_token_last_layer
    from peftstd.training.precision import resolve_precision
    from peftstd.training.threads import set_cpu_threads

    cfg = load_config(None, ["model.max_length=64", "training.batch_size=32", *args.overrides])
    threads = set_cpu_threads(None, 1)
    precision, _ = resolve_precision(cfg.training.precision, torch.cuda.is_available())
    if args.trainer:
        prof, seconds = profile_trainer(args.steps, precision == "bf16")
        subject = ("transformers Trainer + peft as bench/train_throughput.py's trainer-best runs it (MiniLM + LoRA r=16 on all "
                   "linear layers, VADER, DataCollatorWithPadding, group_by_length, torch's dropout)")
        write_profile(args, prof, seconds, precision, threads, subject)
        return
    splits = load_splits(cfg.data, cfg.task.type)
    task = get_task(cfg.task.type, settings=cfg.task.model_dump())
    labels = task.label_names(cfg.task.labels, splits)
    base = resolve_model(cfg.model.name, cfg.model.revision)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    encoded = task.encode(tokenizer, splits.train, labels, cfg.model.max_length)
    torch.manual_seed(0)
    method = get_method(cfg.method)
    model = method.load_base(task, base.path, labels, cfg.model.quantization)
    model = method.apply(model, cfg.method_section(), Wrapping(task.peft_task_type, task.head_modules(model), 1000))
    if cfg.training.cpu_dropout == "packed":
        use_packed_dropout(model)
    if cfg.training.pooled_token_last_layer:
        use_pooled_token_last_layer(model)
    optimizer = build_optimizer(model, cfg.learning_rate(), cfg.training.weight_decay, cfg.training.optimizer)
    loader, generator = train_loader(encoded, task.collator(tokenizer), cfg.training.batch_size, cfg.training.group_by_length)
    generator.manual_seed(0)
    batches = iter(loader)
    model.train()

    def step():
        batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = task.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):  # warm-up
        step()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    seconds = time.perf_counter() - started
    subject = (f"default recipe (MiniLM + LoRA r=16 on all linear layers, VADER), cpu_dropout {cfg.training.cpu_dropout}, "
               f"pooled_token_last_layer {str(cfg.training.pooled_token_last_layer).lower()}")
    write_profile(args, prof, seconds, precision, threads, subject)


def profile_trainer(steps: int, bf16: bool):
    """The Trainer's steps 4 to 3 + `steps` under the profiler (a callback starts and stops it); the wall seconds."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from bench.train_throughput import CLASSIFY, stock_trainer

    class Profiled(TrainerCallback):
        def __init__(self):
            self.prof, self.seconds = profile(activities=[ProfilerActivity.CPU]), 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:  # after 3 warm-up steps, as the recipe's profile
                self.prof.start()
                self.seconds = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3 + steps:
                self.prof.stop()
                self.seconds = time.perf_counter() - self.seconds
                control.should_training_stop = True

    profiled = Profiled()
    stock_trainer((steps + 4) * CLASSIFY["batch"], True, bf16, callbacks=(profiled,))
    return profiled.prof, profiled.seconds


def write_profile(args, prof, seconds: float, precision: str, threads: dict, subject: str) -> None:
    from bench.provenance import machine_line, provenance

    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    families = dict.fromkeys([*FAMILIES, "everything else"], 0.0)
    for event in events:
        family = next((f for f, parts in FAMILIES.items() if any(p in event.key for p in parts)), "everything else")
        families[family] += event.self_cpu_time_total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:20]
    lines = ["# Where a training step's time goes (torch.profiler)", "", f"`{shlex.join(['python', *sys.argv])}`", "",
             f"{machine_line(provenance())}; {threads['threads']} threads, {precision}; {subject}; batch 32, max length 64; "
             f"{args.steps} profiled steps after 3 warm-up steps, {seconds / args.steps * 1000:.0f} ms "
             "per step under the profiler. Self CPU time of torch operators summed over every thread; time outside them (numpy's "
             "generator drawing packed dropout masks) is in the step time but not in the shares.", "",
             "| family | share of self CPU time |", "|---|---|",
             *(f"| {family} | {value / total:.1%} |" for family, value in sorted(families.items(), key=lambda kv: -kv[1])), "",
             "| operator | calls | self CPU ms per step | share |", "|---|---|---|---|",
             *(f"| `{e.key}` | {e.count // args.steps} | {e.self_cpu_time_total / 1000 / args.steps:.2f} | {e.self_cpu_time_total / total:.1%} |"
               for e in top), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
