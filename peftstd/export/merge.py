"""Stage 2: fold LoRA/AdaLoRA into the base weights; bottleneck adapters stay as real modules."""

from __future__ import annotations

import copy

import numpy as np


def merge(model, float_base=None):
    """(merged model, how): peft adapters are merged into a copy; other models are returned as they are.
    A model trained on a 4-/8-bit base (QLoRA) is merged into `float_base` (the same architecture, loaded in float)
    after its base weights are overwritten with the quantized ones, dequantized: the float model the run trained."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and float_base is not None:
        from peft import set_peft_model_state_dict
        from peft.utils import get_peft_model_state_dict

        layers = dequantize_into(model, float_base)
        floating = PeftModel(float_base, copy.deepcopy(model.peft_config[model.active_adapter]))
        set_peft_model_state_dict(floating, get_peft_model_state_dict(model))
        return floating.merge_and_unload().eval(), f"{layers} quantized base layers dequantized to float32, then peft merge_and_unload"
    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload().eval(), "peft merge_and_unload"
    if getattr(model, "adapters_config", None) is not None:
        return model, "bottleneck adapters kept in the graph (they cannot be merged)"
    return model, "nothing to merge (full fine-tuning)"


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.size else 0.0


def dequantize_into(model, float_base) -> int:
    """Copy every bitsandbytes layer of `model`'s base, dequantized, into the same layer of `float_base`; how many."""
    import bitsandbytes as bnb
    import torch
    from peft.utils.integrations import dequantize_bnb_weight

    targets = dict(float_base.named_modules())
    copied = 0
    with torch.no_grad():
        for name, module in model.base_model.model.named_modules():
            if not isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):  # not peft's wrappers, which expose the same weight
                continue
            weight = module.weight
            target = targets[name.removesuffix(".base_layer")]
            target.weight.copy_(dequantize_bnb_weight(weight, state=getattr(module, "state", None)).to(target.weight.dtype))
            if module.bias is not None:
                target.bias.copy_(module.bias.to(target.bias.dtype))
            copied += 1
    return copied
