"""What a fine-tuning method is: how it wraps a model, trains, saves and reloads.

Adding a method means adding one module with a config `Section` and a
`Method` subclass, then listing it in `peftstd/methods/__init__.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from peftstd.config.schema import RecipeConfig
    from peftstd.tasks.base import Task


class Method:
    """Base class of the fine-tuning methods."""

    name: ClassVar[str]
    weights_dir: ClassVar[str] = "adapter"  # folder of the run directory that holds the trained weights

    def check_architecture(self, model_type: str) -> None:
        """Raise `ConfigError` when the method cannot wrap this architecture (checked before weights load)."""

    def check_plan(self, cfg: RecipeConfig, total_steps: int) -> None:
        """Raise `ConfigError` when the method cannot work with this many optimizer steps."""

    def apply(self, model: torch.nn.Module, cfg: RecipeConfig, task: Task, total_steps: int) -> torch.nn.Module:
        """Return the model prepared for training (trainable parameters chosen)."""
        raise NotImplementedError

    def after_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
        """Hook called after every optimizer step, before gradients are zeroed."""

    def snapshot(self, model: torch.nn.Module) -> dict[str, Any]:
        """An in-memory copy of everything training changed (for best-checkpoint restore)."""
        return {"weights": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}}

    def restore(self, model: torch.nn.Module, snapshot: dict[str, Any]) -> None:
        """Put a `snapshot` back into the model."""
        import torch

        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in snapshot["weights"].items():
                parameters[name].copy_(value)

    def state_dict(self, model: torch.nn.Module) -> dict[str, Any]:
        """Method state outside the parameters and optimizer, saved in training checkpoints."""
        return {}

    def load_state_dict(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, when resuming."""

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Write the trained weights in the method's documented on-disk format."""
        raise NotImplementedError

    def load(self, task: Task, base_path: Path, weights_dir: Path, labels: list[str]) -> torch.nn.Module:
        """Rebuild the trained model from the base model folder and `save`'s output."""
        raise NotImplementedError

    def run_summary(self, model: torch.nn.Module) -> dict[str, Any]:
        """Method-specific facts for the manifest (e.g. AdaLoRA's final rank pattern)."""
        return {}
