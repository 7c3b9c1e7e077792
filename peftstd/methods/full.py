"""Full fine-tuning: every weight of the model is trained."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from peftstd.basics.section import Section
from peftstd.methods.base import Method


class FullSection(Section):
    recommended_learning_rate: ClassVar[float] = 5e-5
    freeze_embeddings: bool = Field(False, description="Keep the input embeddings frozen (saves memory, often no accuracy cost).")


class FullFineTuning(Method):
    name = "full"
    weights_dir = "model"

    def apply(self, model, cfg, task, total_steps):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if cfg.full.freeze_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        return model

    def save(self, model, out_dir):
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, task, base_path, weights_dir, labels):
        return task.load_model(weights_dir, labels)
