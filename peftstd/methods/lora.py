"""LoRA through peft; the task head is always trained and saved (peft `modules_to_save`).

With `model.quantization` the frozen base loads in 4 or 8 bits through bitsandbytes (QLoRA: Dettmers et al. 2023)
and is prepared with peft's `prepare_model_for_kbit_training`; the LoRA matrices stay in float.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from peftstd.basics.section import Section
from peftstd.methods.base import Method, register


class LoraSection(Section):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r; higher adds capacity and memory.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (updates are scaled by alpha / rank).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get LoRA: 'all-linear' (every attention and dense layer) or a list of module names."
    )


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

    def save(self, model, out_dir):
        model.save_pretrained(out_dir, safe_serialization=True)

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


@register
class Lora(PeftMethod):
    name = "lora"
    section = LoraSection
    recommended_learning_rate = 5e-4
    summary = "LoRA: low-rank updates of frozen weights (peft); on a float, 8-bit or 4-bit (QLoRA) base"

    def apply(self, model, section, wrapping):
        from peft import LoraConfig

        return self.wrap(
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
