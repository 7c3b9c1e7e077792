"""LoRA through peft; the task head is always trained and saved (peft `modules_to_save`).

With `model.quantization` the frozen base loads in 4 or 8 bits through bitsandbytes (QLoRA: Dettmers et al. 2023)
and is prepared with peft's `prepare_model_for_kbit_training`; the LoRA matrices stay in float.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from peftstd.basics.section import Section
from peftstd.errors import ConfigError
from peftstd.methods.base import Method, register


class LoraSection(Section):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r; higher adds capacity and memory.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (updates are scaled by alpha / rank).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get LoRA: 'all-linear' (every attention and dense layer) or a list of module names."
    )
    init: Literal["default", "loftq"] = Field(
        "default", description="LoRA initialization: default (B = 0, training starts from the base model) or loftq (4-bit "
        "bases only: A and B set so that base + adapter reproduce the float weights as closely as rank r allows, one "
        "LoftQ step; recovers part of what quantization costs before training starts).")


class PeftMethod(Method):
    """Shared loading and saving for methods stored in stock peft format (`adapter/`), on a float or quantized base."""

    library: ClassVar[str] = "peft"
    quantized_base: ClassVar[bool] = True

    def load_base(self, task, path, labels, quantization=None, **config_overrides):
        if quantization is None:
            return task.load_model(path, labels, **config_overrides)
        import torch
        from peft import prepare_model_for_kbit_training

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = task.load_model(path, labels, quantization_config=quantization.bnb_config(list(task.head_candidates)),
                                device_map=device, **config_overrides)
        keep_4bit_layers_trainable(model)
        # casts what stays in float (norms, heads) to fp32 and lets gradients reach the adapters through frozen embeddings;
        # gradient checkpointing is the recipe's own switch (training.gradient_checkpointing), not forced here
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    def save(self, model, out_dir, state_dict=None):
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)

    def load(self, task, base_path, weights_dir, labels, quantization=None):
        from peft import PeftModel

        return PeftModel.from_pretrained(self.load_base(task, base_path, labels, quantization), weights_dir)

    @staticmethod
    def wrap(model, peft_config):
        from peft import get_peft_model

        return get_peft_model(model, peft_config)


def keep_4bit_layers_trainable(model) -> None:
    """bitsandbytes 0.50 repacks a 4-bit layer's weights for its CPU inference kernel on the first forward without
    gradients on an avx512_bf16 CPU, and a training forward after that fails (validation runs between training
    steps); the layers keep their trainable layout here, and evaluation dequantizes like training does."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def loftq_init(model) -> None:
    """One LoftQ step (Li et al. 2023) on a 4-bit base: each LoRA pair becomes the best rank-r approximation of what
    quantization lost (float weight minus dequantized weight), so that base + adapter start at the float model, not at
    the quantized one. Written here because peft's `replace_lora_weights_loftq` computes on CUDA or XPU only. The
    float weights are read one tensor at a time from the base folder's safetensors files."""
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import Linear4bit
    from safetensors import safe_open

    base = model.get_base_model()
    files = {}
    for file in sorted(Path(base.config._name_or_path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            files.update(dict.fromkeys(weights.keys(), file))
    prefix = base.base_model_prefix
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        key = name.removeprefix("base_model.model.") + ".weight"  # a classifier loads its encoder from a bare model's file
        found = next((k for k in (key, key.removeprefix(f"{prefix}."), f"{prefix}.{key}") if k in files), None)
        if found is None:
            raise ConfigError(f"lora.init loftq: {key} is not in the base model's safetensors files")
        with safe_open(str(files[found]), "pt") as weights:
            original = weights.get_tensor(found).float()
        quantized = module.get_base_layer().weight
        residual = original - bnb.functional.dequantize_4bit(quantized.data, quantized.quant_state).float()
        u, s, vh = torch.linalg.svd(residual, full_matrices=False)
        for adapter, rank in module.r.items():
            root = s[:rank].sqrt()
            lora_a, lora_b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            lora_a.data = (root[:, None] * vh[:rank]).to(lora_a.dtype)
            lora_b.data = (u[:, :rank] * root / module.scaling[adapter]).to(lora_b.dtype)  # the forward multiplies by scaling


@register
class Lora(PeftMethod):
    name = "lora"
    section = LoraSection
    recommended_learning_rate = 5e-4
    summary = "LoRA: low-rank updates of frozen weights (peft); on a float, 8-bit or 4-bit (QLoRA) base"

    def apply(self, model, section, wrapping):
        from peft import LoraConfig

        wrapped = self.wrap(
            model,
            LoraConfig(
                task_type=wrapping.peft_task_type,
                r=section.rank,
                lora_alpha=section.alpha,
                lora_dropout=section.dropout,
                target_modules=section.target_modules,
                modules_to_save=wrapping.head_modules,
            ),
        )
        if section.init == "loftq":
            loftq_init(wrapped)
        return wrapped
