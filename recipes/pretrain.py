#!/usr/bin/env python
"""Pretrain a transformer under the peftstd standard: masked-LM (BERT-style) or causal-LM (packed blocks).

    accelerate launch recipes/pretrain.py                       # offline default: continued MLM of MiniLM on VADER text
    accelerate launch recipes/pretrain.py --config recipes/configs/minilm_mlm_vader.yaml masking.whole_word=true
    accelerate launch recipes/pretrain.py objective=causal-lm from_scratch=gpt2-tiny model.name=... data.source=corpus.txt
    accelerate launch recipes/pretrain.py --resume runs/NAME    # continue a killed run (or run the same command again)

Reads top to bottom: config -> corpus -> masking and blocks -> model and method -> training loop (checkpoints) -> run directory.
The run directory holds `model/`, a plain transformers folder: name the run directory as `model.name`
in a fine-tune config, and that run's manifest points back here.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from peftstd.config import load_config
from peftstd.config.pretrain import PretrainConfig
from peftstd.data.sources import make_paths_absolute
from peftstd.errors import exit_on_user_error
from peftstd.run.rundir import resume_arguments

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "minilm_mlm_vader.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="pretraining YAML (default: %(default)s)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an unfinished run from its last complete checkpoint")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.epochs=2 masking.probability=0.2")
    args = parser.parse_args(argv)
    if args.resume:
        args.config, args.overrides = resume_arguments(args.resume, args.overrides)
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides, schema=PretrainConfig)  # fails fast, before torch is imported
    make_paths_absolute(cfg.data)
    return pretrain(cfg, args.config, resume_requested=bool(args.resume))


def pretrain(cfg: PretrainConfig, config_path: str, resume_requested: bool = False) -> int:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from peftstd.basics import atomic
    from peftstd.config import to_yaml
    from peftstd.data import load_splits
    from peftstd.methods import get_method
    from peftstd.models import resolve_model
    from peftstd.models.parameters import parameter_counts
    from peftstd.models.registry import weights_sha256
    from peftstd.pretraining.corpus import causal_blocks, masked_lm_features
    from peftstd.pretraining.evaluate import evaluate_lm, fixed_masks
    from peftstd.pretraining.model import build_model, merge_for_saving
    from peftstd.run import manifest as provenance
    from peftstd.run.card import render_pretraining_card
    from peftstd.run.checkpoints import Checkpoints, TrainerState, checkpoint_due_by_time
    from peftstd.run.report import plot_curves
    from peftstd.run.rundir import decide_run_start, point_latest, run_name
    from peftstd.training import sharding
    from peftstd.training.batching import train_loader
    from peftstd.training.distributed import check_world_size, on_main_then_broadcast
    from peftstd.training.dropout import use_packed_dropout
    from peftstd.training.optim import build_optimizer, build_scheduler, optimizer_steps, state_bytes
    from peftstd.training.precision import resolve_precision
    from peftstd.training.threads import set_cpu_threads

    started = time.time()
    precision, precision_reason = resolve_precision(cfg.training.precision, torch.cuda.is_available())
    # cpu, mixed precision and process group as the launch needs them (DeepSpeed on CPU: gloo, autocast in the engine)
    accelerator = Accelerator(**sharding.accelerator_options(precision), gradient_accumulation_steps=cfg.training.gradient_accumulation_steps)
    sharding.enable_cpu_fsdp(accelerator)  # on CPU, Accelerate would silently train plain DDP instead
    sharding.configure_deepspeed(accelerator, precision, cfg.training.max_grad_norm)
    check_world_size(accelerator.num_processes)
    # LoRA is folded into the weights at the end, which a sharded model cannot do in place
    sharding.check_sharding_supported(accelerator, cfg.method, optimizer=cfg.training.optimizer, methods=("full",), objective=cfg.objective)
    threads = set_cpu_threads(cfg.training.cpu_threads, accelerator.num_processes) if accelerator.device.type == "cpu" else None
    set_seed(cfg.training.seed)
    is_main = accelerator.is_main_process

    # --- Corpus: the train and validation splits of the data section (the test split is never read)
    base = resolve_model(cfg.model.name, cfg.model.revision)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    splits = load_splits(cfg.data, "corpus")
    name = broadcast_object_list([run_name(cfg.output.name, config_path)])[0]
    run_dir = Path(cfg.output.dir) / name
    # Rank 0 decides (and everyone follows): the same command again resumes an unfinished run with this config
    resuming = on_main_then_broadcast(accelerator, lambda: decide_run_start(run_dir, to_yaml(cfg), cfg.output.overwrite, resume_requested))

    # --- Features: masked-LM sentences (masks drawn per batch) or causal-LM packed blocks ----------
    if cfg.objective == "masked-lm":
        train, collator = masked_lm_features(tokenizer, splits.train, cfg)
        validation, _ = masked_lm_features(tokenizer, splits.validation, cfg)
    else:
        train, collator = causal_blocks(tokenizer, splits.train, cfg.block_size)
        validation, _ = causal_blocks(tokenizer, splits.validation, cfg.block_size)
    validation_batches = fixed_masks(validation, collator, cfg.evaluation.batch_size, cfg.evaluation.seed)
    steps_per_epoch, total_steps = optimizer_steps(
        len(train), cfg.training.batch_size, accelerator.num_processes,
        cfg.training.gradient_accumulation_steps, cfg.training.epochs, cfg.training.max_steps,
    )

    # --- Model: continued from `model`, or random weights of a preset / config file ---------------
    with sharding.whole_at_load(accelerator):
        model, started_from = build_model(cfg, base.path, tokenizer, total_steps)
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    packed_dropouts = use_packed_dropout(model) if cfg.training.cpu_dropout == "packed" and accelerator.device.type == "cpu" else 0

    learning_rate = cfg.learning_rate()
    optimizer = build_optimizer(model, learning_rate, cfg.training.weight_decay, cfg.training.optimizer)
    scheduler = build_scheduler(optimizer, cfg.training.scheduler, total_steps, cfg.training.warmup_ratio)
    train_dl, epoch_generator = train_loader(train, collator, cfg.training.batch_size, cfg.training.group_by_length)
    sharding.wrap_transformer_layers(accelerator, model)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    unwrapped = accelerator.unwrap_model(model)
    distributed = sharding.distributed_setup(accelerator, model)  # what the launch actually gave, not what it asked for
    parameters = parameter_counts(unwrapped)

    # --- The starting point, scored on the same validation masks as every later evaluation ---------
    start_metrics = evaluate_lm(model, validation_batches, accelerator, causal=cfg.objective == "causal-lm")
    method = get_method(cfg.method)
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.output.keep_last_checkpoints, accelerator)
    state, best_state = TrainerState(history={"train": [], "validation": [{"step": 0, **start_metrics}]}, selection={"step": 0, **start_metrics}), None
    if resume_from := on_main_then_broadcast(accelerator, lambda: checkpoints.latest_valid() if resuming else None):
        state, best_state = checkpoints.load(resume_from, unwrapped, optimizer, scheduler, method)
        accelerator.step = state.accumulation_counter
    if is_main:
        if not resuming:
            if run_dir.exists():  # decide_run_start allowed it: output.overwrite
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            atomic.write_text(run_dir / "config.yaml", to_yaml(cfg))
        print(f"{cfg.objective} from {started_from}: {len(train):,} training {'sequences' if cfg.objective == 'masked-lm' else 'blocks'}, "
              f"{total_steps} steps, {precision}; start: validation perplexity {start_metrics['perplexity']:.2f}", file=sys.stderr)
        if resume_from:
            print(f"resuming from {resume_from} (step {state.step}, epoch {state.epoch}, batch {state.batches_in_epoch})", file=sys.stderr)

    # --- Training loop ---------------------------------------------------------------------------------
    eval_every = cfg.evaluation.every_steps or steps_per_epoch
    checkpoint_every = cfg.output.checkpoint_every_steps or eval_every
    last_checkpoint_time = time.time()
    progress = tqdm(total=total_steps, initial=state.step, desc="pretrain", disable=not is_main, dynamic_ncols=True)
    session_started, session_start_seconds = time.time(), state.train_seconds
    history, best = state.history, state.selection  # the best validation so far (step 0: the starting model)
    model.train()
    while state.step < total_steps:
        epoch_generator.manual_seed(cfg.training.seed + state.epoch)
        batches = accelerator.skip_first_batches(train_dl, state.batches_in_epoch) if state.batches_in_epoch else train_dl
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.training.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            state.batches_in_epoch += 1
            state.running_loss += loss.detach().float().item()
            state.running_batches += 1
            state.seen += len(batch["input_ids"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            step = state.step
            state.train_seconds = session_start_seconds + time.time() - session_started
            progress.update(1)
            if step % cfg.training.log_every_steps == 0 or step == total_steps:
                history["train"].append({"step": step, "loss": state.running_loss / state.running_batches, "learning_rate": scheduler.get_last_lr()[0]})
                progress.set_postfix(loss=f"{history['train'][-1]['loss']:.3f}")
                state.running_loss, state.running_batches = 0.0, 0
            if step % eval_every == 0 or step == total_steps:
                metrics = evaluate_lm(model, validation_batches, accelerator, causal=cfg.objective == "causal-lm")
                history["validation"].append({"step": step, **metrics})
                if metrics["loss"] < best["loss"]:
                    best = state.selection = {"step": step, **metrics}
                    with sharding.settled(unwrapped):  # FSDP's parameters resharded, ZeRO-3's gathered whole
                        best_state = method.snapshot(unwrapped)
                if is_main:
                    progress.write(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            minutes_due = checkpoint_due_by_time(cfg.output.checkpoint_every_minutes, last_checkpoint_time, accelerator)
            if (step % checkpoint_every == 0 or minutes_due) and step < total_steps:
                state.accumulation_counter = accelerator.step
                checkpoints.save(state, unwrapped, optimizer, scheduler, method, best_state)
                last_checkpoint_time = time.time()
            if step >= total_steps:
                break
        else:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    progress.close()
    step, seen, train_seconds = state.step, state.seen, state.train_seconds

    # --- Run directory: the best weights as a plain transformers folder, metrics, manifest ----------
    if best_state is not None:
        with sharding.settled(unwrapped, modify=True):
            method.restore(unwrapped, best_state)
    weights = sharding.saved_state(accelerator, model)  # gathered whole when sharded (a collective), else None
    if is_main:
        final = merge_for_saving(unwrapped, cfg)
        atomic.replace_dir(run_dir / "model", lambda d: (final.save_pretrained(d, safe_serialization=True, state_dict=weights),
                                                         tokenizer.save_pretrained(d)))
        metrics_doc = {"objective": cfg.objective, "start": start_metrics, "best": best, "history": history,
                       "perplexity_reduction": 1 - best["perplexity"] / start_metrics["perplexity"]}
        atomic.write_json(run_dir / "metrics.json", metrics_doc)
        plot_curves({"train": history["train"], "validation": history["validation"][1:]}, "perplexity", run_dir / "curves.png")
        manifest = {
            **provenance.base_manifest(),
            "run_name": name,
            "seed": cfg.training.seed,
            "pretraining": {"objective": cfg.objective, "started_from": started_from, "model_dir": "model",
                            "masking": cfg.masking.model_dump() if cfg.objective == "masked-lm" else None,
                            "block_size": cfg.block_size if cfg.objective == "causal-lm" else None},
            "base_model": {"name": base.name, "source": base.source, "path": str(base.path),
                           "weights_sha256": weights_sha256(base.path) if not cfg.from_scratch else None},
            "method": {"name": cfg.method},
            "task": {"type": cfg.objective},
            "data": {"sources": splits.sources, "sizes": {"train": len(splits.train), "validation": len(splits.validation)},
                     "sha256": {k: v for k, v in splits.sha256().items() if k != "test"}, "sequences": {"train": len(train), "validation": len(validation)}},
            "parameters": parameters,
            "training": {"precision": precision, "precision_reason": precision_reason, "world_size": accelerator.num_processes, "distributed": distributed,
                         "learning_rate": learning_rate, "optimizer_steps": step, "train_seconds": train_seconds, "resumed": bool(resume_from),
                         "train_sequences_per_second": seen / train_seconds, "cpu_threads": threads,
                         "dropout_masks": {"setting": cfg.training.cpu_dropout, "packed_modules": packed_dropouts},
                         "optimizer": {"name": cfg.training.optimizer, "state_bytes": state_bytes(optimizer)},
                         "gradient_checkpointing": cfg.training.gradient_checkpointing},
            "wall_time_s": time.time() - started,
            "peak_memory": provenance.peak_memory_mb(),
        }
        atomic.write_text(run_dir / "report.md", report(name, manifest, metrics_doc, run_dir))
        atomic.write_text(run_dir / "README.md", render_pretraining_card(name, cfg, manifest, metrics_doc))
        manifest["files"] = provenance.file_hashes(run_dir)
        atomic.write_json(run_dir / "manifest.json", manifest)
        point_latest(run_dir)
        print(f"validation perplexity {start_metrics['perplexity']:.2f} -> {best['perplexity']:.2f} (best, step {best['step']})")
        print(f"run directory: {run_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def report(name: str, manifest: dict, metrics: dict, run_dir: Path) -> str:
    start, best = metrics["start"], metrics["best"]
    rows = "\n".join(f"| {key} | {start[key]:.4f} | {best[key]:.4f} |" for key in ("loss", "perplexity", "accuracy"))
    return f"""# Pretraining run `{name}`

{manifest['pretraining']['objective']} from {manifest['pretraining']['started_from']}, {manifest['training']['optimizer_steps']} optimizer
steps, {manifest['parameters']['trainable']:,} trainable parameters, {manifest['training']['precision']}.
Data: `{manifest['data']['sources']['train']}`, train {manifest['data']['sizes']['train']} / validation
{manifest['data']['sizes']['validation']} texts; the test split is never read.

## Validation ({start['tokens']:,} predicted tokens, the same for every row)

| metric | start | best (step {best['step']}) |
|---|---|---|
{rows}

Fine-tune from it: `accelerate launch recipes/finetune.py model.name={run_dir}`.

```
{manifest['command']}
```
"""


if __name__ == "__main__":
    sys.exit(main())
