"""Stage 2: fold LoRA/AdaLoRA into the base weights; bottleneck adapters stay as real modules."""

from __future__ import annotations

import copy

import numpy as np


def merge(model):
    """(merged model, how): peft adapters are merged into a copy; other models are returned as they are."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload().eval(), "peft merge_and_unload"
    if getattr(model, "adapters_config", None) is not None:
        return model, "bottleneck adapters kept in the graph (they cannot be merged)"
    return model, "nothing to merge (full fine-tuning)"


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.size else 0.0
