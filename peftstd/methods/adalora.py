"""AdaLoRA through peft, done right: the budget is reallocated after every optimizer step
over a schedule derived from the real number of steps, and the final rank pattern is recorded."""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field, model_validator

from peftstd.basics.section import Section
from peftstd.errors import ConfigError
from peftstd.methods.base import register
from peftstd.methods.lora import PeftMethod


class AdaLoraSection(Section):
    init_rank: int = Field(12, ge=1, le=1024, description="Initial rank of every AdaLoRA matrix before budget reallocation.")
    target_rank: int = Field(8, ge=1, le=1024, description="Average rank kept after reallocation.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator, as for LoRA.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules that get AdaLoRA.")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Share of optimizer steps before the first budget reallocation (peft `tinit`).")
    final_fraction: float = Field(0.3, ge=0, lt=1, description="Share of final steps trained at the final rank pattern (peft `tfinal`).")
    reallocation_interval: int = Field(10, ge=1, description="Optimizer steps between two budget reallocations (peft `deltaT`).")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality regulariser added to the loss.")

    @model_validator(mode="after")
    def _ranks_and_schedule(self) -> AdaLoraSection:
        if self.target_rank > self.init_rank:
            raise ValueError(f"target_rank ({self.target_rank}) must not exceed init_rank ({self.init_rank})")
        if self.warmup_fraction + self.final_fraction >= 1:
            raise ValueError("warmup_fraction + final_fraction must be below 1 so that some steps reallocate the budget")
        return self

    def schedule(self, total_steps: int) -> tuple[int, int]:
        """peft's (tinit, tfinal) for a run of `total_steps` optimizer steps."""
        return int(total_steps * self.warmup_fraction), int(total_steps * self.final_fraction)


@register
class AdaLora(PeftMethod):
    name = "adalora"
    section = AdaLoraSection
    recommended_learning_rate = 2e-3
    summary = "AdaLoRA: LoRA whose rank budget moves to the layers that need it (peft)"

    def check_plan(self, section, total_steps):
        tinit, tfinal = section.schedule(total_steps)
        budget_steps = total_steps - tinit - tfinal
        if budget_steps < section.reallocation_interval:
            raise ConfigError(
                f"adalora: the run has {total_steps} optimizer steps, leaving {budget_steps} for budget reallocation, "
                f"fewer than adalora.reallocation_interval={section.reallocation_interval}; "
                "train longer (training.epochs / training.max_steps) or lower adalora.reallocation_interval"
            )

    def apply(self, model, section, wrapping):
        from peft import AdaLoraConfig

        tinit, tfinal = section.schedule(wrapping.total_steps)
        return self.wrap(
            model,
            AdaLoraConfig(
                task_type=wrapping.peft_task_type,
                init_r=section.init_rank,
                target_r=section.target_rank,
                lora_alpha=section.alpha,
                lora_dropout=section.dropout,
                target_modules=section.target_modules,
                modules_to_save=wrapping.head_modules,
                tinit=tinit,
                tfinal=tfinal,
                deltaT=section.reallocation_interval,
                orth_reg_weight=section.orth_reg_weight,
                total_step=wrapping.total_steps,
            ),
        )

    def after_optimizer_step(self, model, step):
        # peft leaves this call to the user; without it AdaLoRA silently trains as plain LoRA.
        model.base_model.update_and_allocate(step)

    def snapshot(self, model):
        # The rank pattern decides which singular values peft keeps on save, so it travels with the weights.
        config = model.peft_config[model.active_adapter]
        return {**super().snapshot(model), "rank_pattern": copy.deepcopy(config.rank_pattern)}

    def restore(self, model, snapshot):
        super().restore(model, snapshot)
        model.peft_config[model.active_adapter].rank_pattern = copy.deepcopy(snapshot["rank_pattern"])

    def state_dict(self, model):
        allocator = model.base_model.rankallocator
        return {
            "ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
            "rank_pattern": model.peft_config[model.active_adapter].rank_pattern,
        }

    def load_state_dict(self, model, state):
        allocator = model.base_model.rankallocator
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
        model.peft_config[model.active_adapter].rank_pattern = state["rank_pattern"]

    def run_summary(self, model):
        config = model.peft_config[model.active_adapter]
        pattern = config.rank_pattern or {}
        ranks = {name: int(sum(mask)) for name, mask in pattern.items()}
        return {"rank_pattern": ranks, "init_rank": config.init_r, "target_rank": config.target_r}
