"""LoRA through peft; the task head is always trained and saved (peft `modules_to_save`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from peftstd.basics.section import Section
from peftstd.methods.base import Method


class LoraSection(Section):
    recommended_learning_rate: ClassVar[float] = 5e-4
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r; higher adds capacity and memory.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (updates are scaled by alpha / rank).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get LoRA: 'all-linear' (every attention and dense layer) or a list of module names."
    )


class PeftMethod(Method):
    """Shared save/load for methods stored in stock peft format (`adapter/`)."""

    def save(self, model, out_dir):
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, task, base_path, weights_dir, labels):
        from peft import PeftModel

        return PeftModel.from_pretrained(task.load_model(base_path, labels), weights_dir)

    @staticmethod
    def wrap(model, peft_config):
        from peft import get_peft_model

        return get_peft_model(model, peft_config)


class Lora(PeftMethod):
    name = "lora"

    def apply(self, model, cfg, task, total_steps):
        from peft import LoraConfig

        section = cfg.lora
        return self.wrap(
            model,
            LoraConfig(
                task_type=task.peft_task_type,
                r=section.rank,
                lora_alpha=section.alpha,
                lora_dropout=section.dropout,
                target_modules=section.target_modules,
                modules_to_save=task.head_modules(model),
            ),
        )
