"""AdamW with decoupled weight decay (none on biases and norms) and a warm-up schedule; torch's, or bitsandbytes'
8-bit one (`training.optimizer`), whose state takes a byte per value instead of four."""

from __future__ import annotations

import math

import torch

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float, kind: str = "adamw") -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if name.endswith(NO_DECAY) else decay).append(parameter)
    # An empty group is left out: DeepSpeed's ZeRO-3 drops it, and the schedule would then miss a group.
    groups = [group for group in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
              if group["params"]]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate)
    import bitsandbytes as bnb

    # min_8bit_size: tensors smaller than this keep 32-bit state (bitsandbytes' default, 4096 values)
    return {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[kind](groups, lr=learning_rate)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's per-parameter state (moments and, for 8-bit optimizers, their scales and
    quantization maps, which bitsandbytes shares among parameters and are counted once)."""
    tensors = {value.data_ptr(): value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)}
    return sum(value.numel() * value.element_size() for value in tensors.values())


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
