"""AdamW with decoupled weight decay (none on biases and norms) and a warm-up schedule."""

from __future__ import annotations

import math

import torch

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if name.endswith(NO_DECAY) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


def build_scheduler(optimizer, kind: str, total_steps: int, warmup_ratio: float):
    from transformers import get_scheduler

    name = "constant_with_warmup" if kind == "constant" else kind
    return get_scheduler(
        name, optimizer, num_warmup_steps=math.ceil(total_steps * warmup_ratio), num_training_steps=total_steps
    )


def optimizer_steps(n_examples: int, batch_size: int, world_size: int, accumulation: int, epochs: float, max_steps: int | None) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps) of the real schedule."""
    batches_per_epoch = math.ceil(n_examples / (batch_size * world_size))
    per_epoch = max(1, math.ceil(batches_per_epoch / accumulation))
    return per_epoch, max_steps or max(1, math.ceil(per_epoch * epochs))
