"""What a fine-tuning method is: how it loads its base model, wraps it, trains, saves and reloads.

Methods plug in the way peft's tuners do: a method is one module in `peftstd/methods/` holding a config `Section`
and a `Method` subclass decorated with `@register`. The package imports every module in the folder, so the registry,
the recipe schema (one `method:` name and one section per method) and the docs pick a new method up with no other
edit; a recipe using it goes in `recipes/configs/`. A method sees only its own section, never the whole recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from peftstd.basics.section import Section
from peftstd.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from peftstd.tasks.base import Task

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under its `name`."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"two methods are registered as {cls.name!r}: {METHODS[cls.name].__qualname__} and {cls.__qualname__}")
    METHODS[cls.name] = cls
    return cls


def quantization_problem(method: str) -> str | None:
    """Why `method` cannot train on a quantized base, or None when it can (the schema and the methods say the same)."""
    if METHODS[method].quantized_base:
        return None
    allowed = ", ".join(name for name, cls in METHODS.items() if cls.quantized_base)
    return f"model.quantization needs a method that trains on a frozen quantized base ({allowed}), not {method!r}"


@dataclass(frozen=True)
class Wrapping:
    """What a method needs to know about the model it wraps, beyond its own section."""

    peft_task_type: str | None  # peft's task type (SEQ_CLS, CAUSAL_LM, ...); None for a bare language model
    head_modules: list[str]  # task-head modules: always trained and saved, whatever the method
    total_steps: int  # optimizer steps of the whole run


class Method:
    """Base class of the fine-tuning methods."""

    name: ClassVar[str]
    section: ClassVar[type[Section]]  # the method's settings: the recipe's section of the same name
    library: ClassVar[str]  # the package that implements it (recorded in the manifest, named in the docs)
    recommended_learning_rate: ClassVar[float]  # used when training.learning_rate is null
    summary: ClassVar[str]  # one line for the schema and the docs
    weights_dir: ClassVar[str] = "adapter"  # folder of the run directory that holds the trained weights
    quantized_base: ClassVar[bool] = False  # can train on a 4-/8-bit base model (model.quantization)

    def check_architecture(self, model_type: str) -> None:
        """Raise `ConfigError` when the method cannot wrap this architecture (checked before weights load)."""

    def check_plan(self, section: Section, total_steps: int) -> None:
        """Raise `ConfigError` when the method cannot work with this many optimizer steps."""

    def check_quantization(self, quantization: Any) -> None:
        """Raise `ConfigError` when asked for a quantized base the method cannot train."""
        if quantization is not None and (problem := quantization_problem(self.name)):
            raise ConfigError(problem)

    def load_base(self, task: Task, path: Path, labels: list[str], quantization: Any = None, **config_overrides) -> torch.nn.Module:
        """The base model the method starts from: by default the task's float model."""
        self.check_quantization(quantization)
        return task.load_model(path, labels, **config_overrides)

    def apply(self, model: torch.nn.Module, section: Section, wrapping: Wrapping) -> torch.nn.Module:
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

    def save(self, model: torch.nn.Module, out_dir: Path, state_dict: dict[str, Any] | None = None) -> None:
        """Write the trained weights in the method's documented on-disk format; `state_dict`: whole tensors gathered
        from a sharded model (None: the model's own)."""
        raise NotImplementedError

    def load(self, task: Task, base_path: Path, weights_dir: Path, labels: list[str], quantization: Any = None) -> torch.nn.Module:
        """Rebuild the trained model from the base model folder and `save`'s output."""
        raise NotImplementedError

    def run_summary(self, model: torch.nn.Module) -> dict[str, Any]:
        """Method-specific facts for the manifest (e.g. AdaLoRA's final rank pattern)."""
        return {}
