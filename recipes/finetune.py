#!/usr/bin/env python
"""Fine-tune a pretrained transformer under the peftstd standard (full, LoRA, AdaLoRA, adapter).

    accelerate launch recipes/finetune.py                       # offline default: MiniLM + LoRA on VADER
    accelerate launch recipes/finetune.py --config recipes/configs/minilm_adalora_sentiment.yaml training.epochs=2
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/finetune.py ...    # 2 processes (gloo on CPU)
    accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/finetune.py ...   # 2 processes, fully sharded
    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml recipes/finetune.py ...   # DeepSpeed ZeRO-3

Reads top to bottom: config -> data -> model and method -> training loop -> test -> run directory.
Only rank 0 writes the run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from peftstd.config import RecipeConfig, load_config
from peftstd.data.sources import make_paths_absolute
from peftstd.errors import exit_on_user_error
from peftstd.run.rundir import resume_arguments

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "minilm_lora_sentiment.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe YAML (default: %(default)s)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an unfinished run from its last complete checkpoint")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.epochs=2 lora.rank=8")
    args = parser.parse_args(argv)
    if args.resume:
        args.config, args.overrides = resume_arguments(args.resume, args.overrides)
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)  # a typo fails here, in well under 2 s: torch is not imported yet
    make_paths_absolute(cfg.data)
    return finetune(cfg, args.config, resume_requested=bool(args.resume))


def finetune(cfg: RecipeConfig, config_path: str, resume_requested: bool = False) -> int:
    """The recipe proper; its heavy imports live here so that `main` can reject bad configs fast."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoTokenizer

    from peftstd.basics import atomic
    from peftstd.config import to_yaml
    from peftstd.data import load_splits
    from peftstd.methods import Wrapping, get_method
    from peftstd.models import resolve_model
    from peftstd.models.gguf import conversion_record
    from peftstd.models.parameters import parameter_counts
    from peftstd.models.quantization import weight_bytes
    from peftstd.models.registry import check_max_length, weights_sha256
    from peftstd.regularization.augment import augment_examples
    from peftstd.regularization.dropout import dropout_overrides
    from peftstd.regularization.fgm import FGM
    from peftstd.run import manifest as provenance
    from peftstd.run.banner import print_banner
    from peftstd.run.card import render_card
    from peftstd.run.checkpoints import Checkpoints, TrainerState, checkpoint_due_by_time
    from peftstd.run.report import plot_curves, render_report
    from peftstd.run.rundir import create_run_dir, decide_run_start, point_latest, run_name
    from peftstd.sweep.trial import SweepTrial
    from peftstd.tasks import get_task
    from peftstd.training import sharding
    from peftstd.training.batching import eval_loader, train_loader
    from peftstd.training.distributed import check_world_size, on_main_then_broadcast
    from peftstd.training.dropout import use_packed_dropout
    from peftstd.training.evaluate import evaluate
    from peftstd.training.flops import matmul_peak, training_flops_per_token, utilization
    from peftstd.training.optim import build_optimizer, build_scheduler, optimizer_steps, state_bytes
    from peftstd.training.pooled_token import use_pooled_token_last_layer
    from peftstd.training.precision import resolve_precision
    from peftstd.training.selection import Selection
    from peftstd.training.threads import set_cpu_threads

    started = time.time()
    sweep_trial = SweepTrial.from_env()  # set by `peftstd sweep`: report validation values, stop when pruned

    # --- Accelerator: device placement, mixed precision, gradient accumulation, DDP -------------
    precision, precision_reason = resolve_precision(cfg.training.precision, torch.cuda.is_available())
    # cpu, mixed precision and process group as the launch needs them (DeepSpeed on CPU: gloo, autocast in the engine)
    accelerator = Accelerator(**sharding.accelerator_options(precision), gradient_accumulation_steps=cfg.training.gradient_accumulation_steps)
    sharding.enable_cpu_fsdp(accelerator)  # on CPU, Accelerate would silently train plain DDP instead
    sharding.configure_deepspeed(accelerator, precision, cfg.training.max_grad_norm)
    check_world_size(accelerator.num_processes)
    sharding.check_sharding_supported(accelerator, cfg.method, cfg.model.quantization is not None, cfg.training.optimizer,
                                      bool(cfg.regularization.fgm_epsilon))
    threads = set_cpu_threads(cfg.training.cpu_threads, accelerator.num_processes) if accelerator.device.type == "cpu" else None
    set_seed(cfg.training.seed)
    is_main = accelerator.is_main_process

    # --- Everything a user can get wrong is checked here, before any weights load or file is written
    base = resolve_model(cfg.model.name, cfg.model.revision)
    model_config = AutoConfig.from_pretrained(base.path)
    check_max_length(cfg.model.max_length, model_config)
    splits = load_splits(cfg.data, cfg.task.type)
    task = get_task(cfg.task.type, settings=cfg.task.model_dump())
    labels = task.label_names(cfg.task.labels, splits)
    method = get_method(cfg.method)
    task.check_model(model_config)
    method.check_architecture(model_config.model_type)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    regularization = cfg.regularization
    augmented = augment_examples(splits.train, regularization.augmentation.copies, regularization.augmentation.rate,
                                 regularization.augmentation.operations, tokenizer, cfg.training.seed)
    train_rows = splits.train + augmented  # the split itself (and its sha256 in the manifest) stays as read
    steps_per_epoch, total_steps = optimizer_steps(
        len(train_rows), cfg.training.batch_size, accelerator.num_processes,
        cfg.training.gradient_accumulation_steps, cfg.training.epochs, cfg.training.max_steps,
    )
    method.check_plan(cfg.method_section(), total_steps)
    name = broadcast_object_list([run_name(cfg.output.name, config_path)])[0]
    run_dir = Path(cfg.output.dir) / name
    # Rank 0 decides (and everyone follows): a rank that looked later would see rank 0's fresh folder.
    resuming = on_main_then_broadcast(accelerator, lambda: decide_run_start(run_dir, to_yaml(cfg), cfg.output.overwrite, resume_requested))

    # --- Tokenize: dynamic padding later, so features keep their own lengths ---------------------
    encoded = {split: task.encode(tokenizer, train_rows if split == "train" else rows, labels, cfg.model.max_length,
                                  label_all_subwords=cfg.task.label_all_subwords and split == "train",
                                  packing=cfg.task.packing and split == "train")
               for split, rows in splits.items()}
    collator = task.collator(tokenizer)

    # --- Model, task head and fine-tuning method ----------------------------------------------------
    dropout = dropout_overrides(model_config, regularization.dropout)
    with sharding.whole_at_load(accelerator):
        model = method.load_base(task, base.path, labels, cfg.model.quantization, **dropout)
        base_weight_bytes = weight_bytes(model)
        if cfg.training.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = method.apply(model, cfg.method_section(), Wrapping(task.peft_task_type, task.head_modules(model), total_steps))
    packed_dropouts = use_packed_dropout(model) if cfg.training.cpu_dropout == "packed" and accelerator.device.type == "cpu" else 0
    pooled_token = (use_pooled_token_last_layer(model) if cfg.training.pooled_token_last_layer
                    else {"applied": False, "reason": "training.pooled_token_last_layer is false"})
    parameters = parameter_counts(model)

    # --- Optimizer, schedule, loaders ------------------------------------------------------------------
    learning_rate = cfg.learning_rate()
    optimizer = build_optimizer(model, learning_rate, cfg.training.weight_decay, cfg.training.optimizer)
    # Not passed to accelerator.prepare: its scheduler wrapper steps once per process, while
    # total_steps above already counts optimizer steps of the whole multi-process run.
    scheduler = build_scheduler(optimizer, cfg.training.scheduler, total_steps, cfg.training.warmup_ratio)
    train_dl, epoch_generator = train_loader(encoded["train"], collator, cfg.training.batch_size, cfg.training.group_by_length)
    val_dl, val_order = eval_loader(encoded["validation"], collator, cfg.evaluation.batch_size)
    test_dl, test_order = eval_loader(encoded["test"], collator, cfg.evaluation.batch_size)
    # --- Model FLOPs: one step counted on a batch of the training split (RNG untouched), on the prepared model,
    #     except under DeepSpeed, whose gradient hooks would keep that step's gradients for the first real one
    def count_flops(counted):
        sample = {k: v.to(next(counted.parameters()).device) if hasattr(v, "to") else v
                  for k, v in collator(encoded["train"].features[: cfg.training.batch_size]).items()}
        return training_flops_per_token(counted, sample, lambda m, b: task.loss(m, b, regularization.label_smoothing))

    flops_per_token = count_flops(model) if sharding.requested() == "deepspeed" else None
    sharding.wrap_transformer_layers(accelerator, model)
    model, optimizer, train_dl, val_dl, test_dl = accelerator.prepare(model, optimizer, train_dl, val_dl, test_dl)
    unwrapped = accelerator.unwrap_model(model)
    distributed = sharding.distributed_setup(accelerator, model)  # what the launch actually gave, not what it asked for
    fgm = FGM(unwrapped, regularization.fgm_epsilon) if regularization.fgm_epsilon else None
    if flops_per_token is None:
        flops_per_token = count_flops(model)
    peak = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32,
                       torch.get_num_threads(), accelerator.device) * accelerator.num_processes

    # --- Generative tasks: the base model's validation loss and test generations, before any training
    #     or checkpoint touches the weights (the fine-tuned model is compared against them at the end)
    generative = task.generative
    generation_rows = splits.test[: cfg.generation.samples] if generative else []
    if generative:
        base_validation, _, _ = evaluate(model, val_dl, val_order, accelerator, task)
        base_texts = task.generate(unwrapped, tokenizer, generation_rows, cfg.generation, cfg.model.max_length, cfg.training.seed)
        if is_main:
            print(f"base model: validation perplexity {base_validation['perplexity']:.3f}", file=sys.stderr)

    # --- Run directory (rank 0 writes), or the checkpoint to resume from --------------------------
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.output.keep_last_checkpoints, accelerator)
    state, best_snapshot = TrainerState(), None
    if resume_from := on_main_then_broadcast(accelerator, lambda: checkpoints.latest_valid() if resuming else None):
        state, best_snapshot = checkpoints.load(resume_from, unwrapped, optimizer, scheduler, method)
        accelerator.step = state.accumulation_counter
    selection = Selection(cfg.evaluation.metric, cfg.evaluation.early_stopping_patience, **state.selection)
    writer = None
    if is_main:
        if not resuming:
            create_run_dir(run_dir)
            atomic.write_text(run_dir / "config.yaml", to_yaml(cfg))
        if cfg.output.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(run_dir / "tensorboard", purge_step=state.step + 1 if resume_from else None)
        print_banner(cfg, base, splits, parameters, precision, accelerator.num_processes, total_steps, run_dir, threads, distributed)
        if resume_from:
            print(f"resuming from {resume_from} (step {state.step}, epoch {state.epoch}, batch {state.batches_in_epoch})", file=sys.stderr)

    # --- Training loop ---------------------------------------------------------------------------------
    eval_every = cfg.evaluation.every_steps or steps_per_epoch
    checkpoint_every = cfg.output.checkpoint_every_steps or eval_every
    last_checkpoint_time = time.time()
    progress = tqdm(total=total_steps, initial=state.step, desc="train", disable=not is_main, dynamic_ncols=True)
    session_started, session_start_seconds = time.time(), state.train_seconds
    model.train()
    pruned = False
    while state.step < total_steps and not selection.should_stop and not pruned:
        epoch_generator.manual_seed(cfg.training.seed + state.epoch)  # data order depends on (seed, epoch) only
        batches = accelerator.skip_first_batches(train_dl, state.batches_in_epoch) if state.batches_in_epoch else train_dl
        for batch in batches:
            with accelerator.accumulate(model):
                loss = task.loss(model, batch, regularization.label_smoothing)
                accelerator.backward(loss)
                if fgm and fgm.perturb():  # second pass on adversarially perturbed embeddings; gradients add up
                    accelerator.backward(task.loss(model, batch, regularization.label_smoothing))
                    fgm.clear()
                if accelerator.sync_gradients and cfg.training.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    method.after_optimizer_step(unwrapped, state.step + 1)
                    scheduler.step()
                optimizer.zero_grad()
            state.batches_in_epoch += 1
            state.running_loss += loss.detach().float().item()
            state.running_batches += 1
            state.seen += len(batch["input_ids"]) * accelerator.num_processes
            state.tokens += batch["input_ids"].numel() * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            step = state.step
            state.train_seconds = session_start_seconds + time.time() - session_started
            progress.update(1)

            if step % cfg.training.log_every_steps == 0 or step == total_steps:
                record = {"step": step, "epoch": step / steps_per_epoch, "loss": state.running_loss / state.running_batches,
                          "learning_rate": scheduler.get_last_lr()[0]}
                state.history["train"].append(record)
                state.running_loss, state.running_batches = 0.0, 0
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}",
                                     samples_s=f"{state.seen / state.train_seconds:.0f}")
                if writer:
                    writer.add_scalar("train/loss", record["loss"], step)
                    writer.add_scalar("train/learning_rate", record["learning_rate"], step)

            if step % eval_every == 0 or step == total_steps:
                metrics, _, _ = evaluate(model, val_dl, val_order, accelerator, task)
                state.history["validation"].append({"step": step, "epoch": step / steps_per_epoch, **metrics})
                improved = selection.update(metrics, step)
                if sweep_trial:
                    pruned = on_main_then_broadcast(accelerator, lambda at=step, value=metrics[selection.metric]: sweep_trial.should_prune(at, value))
                if improved:
                    with sharding.settled(unwrapped):  # FSDP's parameters resharded, ZeRO-3's gathered whole
                        best_snapshot = method.snapshot(unwrapped)
                    weights = sharding.saved_state(accelerator, model)  # collective when sharded
                    if is_main:
                        atomic.replace_dir(run_dir / "checkpoints" / "best", lambda d, w=weights: method.save(unwrapped, d, w))
                if is_main:
                    progress.write(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                                   + (" (best)" if improved else "") + (" (pruned by the sweep)" if pruned else ""))
                    if writer:
                        for key, value in metrics.items():
                            writer.add_scalar(f"validation/{key}", value, step)

            minutes_due = checkpoint_due_by_time(cfg.output.checkpoint_every_minutes, last_checkpoint_time, accelerator)
            if (step % checkpoint_every == 0 or minutes_due) and step < total_steps:
                state.selection, state.accumulation_counter = selection.state(), accelerator.step
                checkpoints.save(state, unwrapped, optimizer, scheduler, method, best_snapshot)
                last_checkpoint_time = time.time()
            if step >= total_steps or selection.should_stop or pruned:
                break
        else:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    progress.close()
    history, train_seconds = state.history, state.train_seconds

    # --- Final model: best checkpoint, evaluated on the test split in float32 ------------------------
    with sharding.settled(unwrapped, modify=True):
        method.restore(unwrapped, best_snapshot)
    # test_outputs: logits, or a task's own outputs (QA: answers; generative tasks: `Generations`, set below)
    test_metrics, test_outputs, test_labels = evaluate(sharding.float32_module(model), test_dl, test_order, accelerator, task,
                                                       autocast=False)
    if generative:
        tuned_texts = task.generate(unwrapped, tokenizer, generation_rows, cfg.generation, cfg.model.max_length, cfg.training.seed)
        test_outputs = task.scored_generations({"base model": base_texts, "fine-tuned": tuned_texts}, generation_rows)
        test_metrics.update({k: v for k, v in test_outputs.scores["fine-tuned"].items() if k != "prompts"})

    # --- Run directory: weights, metrics, predictions, report, manifest ------------------------------
    weights = sharding.saved_state(accelerator, model)  # collective when sharded
    if is_main:
        weights_dir = run_dir / method.weights_dir
        atomic.replace_dir(weights_dir, lambda d: (method.save(unwrapped, d, weights), tokenizer.save_pretrained(d)))
        atomic.write_json(run_dir / "labels.json", labels)
        metrics_doc = {
            "task": task.name,
            "history": history,
            "best": {"metric": selection.metric, "value": selection.best, "step": selection.best_step},
            "test": test_metrics,
        }
        if generative:
            metrics_doc["base_model"] = {"validation": base_validation, "test_generation": test_outputs.scores["base model"],
                                         "generation": cfg.generation.model_dump()}
        atomic.write_json(run_dir / "metrics.json", metrics_doc)
        predictions = task.prediction_records(splits.test, test_outputs, test_labels, labels)
        atomic.write_text(run_dir / "predictions" / "test.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))
        plot_curves(history, selection.metric, run_dir / "curves.png")
        manifest = {
            **provenance.base_manifest(),
            "run_name": name,
            "seed": cfg.training.seed,
            "base_model": {"name": base.name, "source": base.source, "path": str(base.path), "weights_sha256": weights_sha256(base.path),
                           "conversion": conversion_record(base.path), "weight_bytes": base_weight_bytes,
                           "quantization": cfg.model.quantization.model_dump() if cfg.model.quantization else None,
                           "pretraining_run": base.source.removeprefix("pretraining-run:") if base.source.startswith("pretraining-run:") else None},
            "method": {"name": method.name, "library": method.library, "weights_dir": method.weights_dir, **method.run_summary(unwrapped)},
            "task": {"type": task.name, "labels": labels, "settings": cfg.task.model_dump()},
            "data": {
                "sources": splits.sources,
                "sizes": {split: len(rows) for split, rows in splits.items()},
                "sha256": splits.sha256(),
                "skipped_rows": splits.skipped_rows,
                "truncated": {split: enc.truncated for split, enc in encoded.items()},
                "max_length": cfg.model.max_length,
                "augmented_train_examples": len(augmented),
            },
            "regularization": {**regularization.model_dump(), "dropout_overrides": dropout},
            "parameters": parameters,
            "training": {
                "precision": precision, "precision_reason": precision_reason, "world_size": accelerator.num_processes,
                "device": str(accelerator.device), "learning_rate": learning_rate, "optimizer_steps": state.step,
                "planned_steps": total_steps, "steps_per_epoch": steps_per_epoch, "stopped_early": selection.should_stop,
                "train_seconds": train_seconds, "train_samples_per_second": state.seen / train_seconds,
                "resumed": bool(resume_from), "cpu_threads": threads, "distributed": distributed,
                "dropout_masks": {"setting": cfg.training.cpu_dropout, "packed_modules": packed_dropouts},
                "pooled_token_last_layer": {"setting": cfg.training.pooled_token_last_layer, **pooled_token},
                "optimizer": {"name": cfg.training.optimizer, "state_bytes": state_bytes(optimizer)},
                "gradient_checkpointing": cfg.training.gradient_checkpointing,
                "flops": utilization(flops_per_token, state.tokens, train_seconds, peak),
            },
            "sweep": sweep_trial.record() if sweep_trial else None,
            "wall_time_s": time.time() - started,
            "peak_memory": provenance.peak_memory_mb(),
        }
        atomic.write_text(run_dir / "report.md", render_report(name, manifest, metrics_doc, task.report(test_outputs, test_labels, labels, splits.test)))
        atomic.write_text(run_dir / "README.md", render_card(name, cfg, manifest, metrics_doc))
        manifest["files"] = provenance.file_hashes(run_dir)
        atomic.write_json(run_dir / "manifest.json", manifest)
        point_latest(run_dir)
        if writer:
            writer.close()
        flops = manifest["training"]["flops"]
        print(f"throughput: {manifest['training']['train_samples_per_second']:.1f} samples/s, {flops['achieved_flops_per_s'] / 1e9:.1f} "
              f"GFLOP/s achieved = {flops['mfu']:.1%} of the measured {precision} matmul peak ({flops['peak_flops_per_s'] / 1e9:.0f} GFLOP/s)")
        print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()))
        print(f"run directory: {run_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
