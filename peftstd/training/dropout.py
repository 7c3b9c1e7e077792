"""Dropout with cheaper random masks on CPU (`training.cpu_dropout: packed`).

Profiled on the default recipe (bench/results/train_profile.md), drawing dropout masks (`aten::bernoulli_`, one
Mersenne-Twister draw per element) took 39% of a LoRA step's CPU time, as much as every matmul: LoRA puts a dropout
on the input of each adapted layer. Here one 64-bit draw gives four 16-bit uniforms, and the draws come from numpy's
SFC64 generator (about 2.5x torch's CPU generator per draw here) seeded by one draw from torch's, so runs stay
reproducible under `training.seed` and resume exactly (checkpoints hold torch's RNG state). The keep probability is a
multiple of 1/65536 (p=0.05 becomes 3277/65536 = 0.050003). The step-level effect is in
bench/results/train_profile.md and train_throughput.md. No library ships this (torch's CPU dropout is the bernoulli kernel), hence
by hand. On GPU torch's own Philox dropout is already cheap and is kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch

RESOLUTION = 65536  # one 16-bit uniform per element


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Boolean CPU mask, True with probability 1 - p (rounded to 1/65536), four elements per 64-bit draw."""
    count = math.prod(shape)
    seed = int(torch.randint(0, 2**62, ()))  # the only draw from torch's generator
    words = np.random.SFC64(seed).random_raw((count + 3) // 4)
    uniforms = words.view(np.int16)[:count]  # each int16 uniform on [-32768, 32767]
    return torch.from_numpy(uniforms >= round(p * RESOLUTION) - RESOLUTION // 2).view(shape)


class PackedDropout(torch.nn.Dropout):
    """`nn.Dropout` whose training-mode masks come from `keep_mask`; same scaling (1 / (1 - p)) and eval behaviour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return torch.zeros_like(x)
        keep = keep_mask(x.shape, self.p)
        return x * (keep.to(x.device, x.dtype) * (1.0 / (1.0 - self.p)))  # one multiply of x: autograd keeps only the scaled mask


def use_packed_dropout(model: torch.nn.Module) -> int:
    """Replace every plain `nn.Dropout` with p > 0 (the model's own and LoRA's) by `PackedDropout`; how many."""
    replaced = 0
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if type(child) is torch.nn.Dropout and child.p > 0:
                packed = PackedDropout(child.p, inplace=False)
                packed.train(child.training)
                parent._modules[name] = packed
                replaced += 1
    return replaced
