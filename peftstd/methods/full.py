"""Full fine-tuning: every weight of the model is trained."""

from __future__ import annotations

from pydantic import Field

from peftstd.basics.section import Section
from peftstd.methods.base import Method, register


class FullSection(Section):
    freeze_embeddings: bool = Field(False, description="Keep the input embeddings frozen (saves memory, often no accuracy cost).")


@register
class FullFineTuning(Method):
    name = "full"
    section = FullSection
    library = "transformers"
    recommended_learning_rate = 5e-5
    summary = "full fine-tuning: every weight trains"
    weights_dir = "model"

    def apply(self, model, section, wrapping):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if section.freeze_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        return model

    def save(self, model, out_dir, state_dict=None):
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)

    def load(self, task, base_path, weights_dir, labels, quantization=None):
        return task.load_model(weights_dir, labels)
