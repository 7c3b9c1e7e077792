"""The sweep file: a base recipe, a search space over the recipe schema's own dotted keys, the objective, the
sampler and the pruner. Validated like a recipe, before any trial runs: an unknown key (with the closest name), a
key that is a section, a range the key's type cannot take, or a value the recipe schema would reject is one line.

    base: ../configs/minilm_lora_sentiment.yaml      # relative to the sweep file
    fixed: {training.max_steps: 60}                   # overrides every trial shares
    space:
      training.learning_rate: {log_uniform: [1.0e-5, 3.0e-3]}
      lora.rank: {choice: [4, 8, 16, 32]}
      regularization.label_smoothing: {uniform: [0.0, 0.2]}
    objective: {metric: accuracy}                     # validation metric; direction from the metric
    sampler: {type: tpe, seed: 0}
    pruner: {type: median, startup_trials: 2, warmup_evaluations: 1}
    trials: 20
"""

from __future__ import annotations

import difflib
import json
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from peftstd.basics.section import Section
from peftstd.config import RecipeConfig, load_config
from peftstd.config.load import read_yaml
from peftstd.errors import ConfigError
from peftstd.tasks import LOWER_IS_BETTER

KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")


class Objective(Section):
    metric: str | None = Field(None, description="validation metric to optimize (evaluation.metric of every trial); "
                               "default: the base recipe's, i.e. the task's primary metric")
    direction: Literal["maximize", "minimize"] | None = Field(None, description="default: minimize loss and perplexity, "
                                                                "maximize the rest")


class Sampler(Section):
    type: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler: TPE (Bayesian) or random search")
    seed: int | None = Field(0, description="sampler seed; null for a fresh one each start")
    startup_trials: int = Field(4, ge=0, description="TPE: random trials before the model takes over")


class Pruner(Section):
    type: Literal["median", "hyperband", "none"] = Field("median", description="stop trials whose intermediate validation "
                                                          "value is worse than the median of earlier trials at the same step")
    startup_trials: int = Field(2, ge=0, description="median: trials that run to the end before any is pruned")
    warmup_evaluations: int = Field(1, ge=0, description="median: evaluations of a trial before it may be pruned")


class SweepSpec(Section):
    base: str = Field(description="the recipe config every trial starts from (relative to the sweep file)")
    fixed: dict[str, Any] = Field(default_factory=dict, description="dotted overrides shared by every trial")
    space: dict[str, dict[str, list]] = Field(description="dotted recipe key -> {uniform|log_uniform|int|log_int: [low, high]} "
                                              "or {choice: [values]}")
    objective: Objective = Field(default_factory=Objective)
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=Pruner)
    trials: int = Field(20, ge=1, description="trials of the study in all (over every worker and machine)")

    @model_validator(mode="after")
    def _shape(self) -> SweepSpec:
        if not self.space:
            raise ValueError("space is empty; give at least one key to search")
        for key, spec in self.space.items():
            if len(spec) != 1 or next(iter(spec)) not in KINDS:
                raise ValueError(f"space.{key}: give exactly one of {', '.join(KINDS)}, e.g. {{log_uniform: [1.0e-5, 1.0e-3]}}")
            kind, values = next(iter(spec.items()))
            if kind == "choice":
                if not values:
                    raise ValueError(f"space.{key}: choice needs at least one value")
                continue
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"space.{key}: {kind} takes [low, high] numbers, got {values!r}")
            low, high = values
            if not low < high:
                raise ValueError(f"space.{key}: {kind} needs low < high, got [{low}, {high}]")
            if kind.startswith("log") and low <= 0:
                raise ValueError(f"space.{key}: {kind} needs low > 0, got {low}")
            if kind in ("int", "log_int") and not (float(low).is_integer() and float(high).is_integer()):
                raise ValueError(f"space.{key}: {kind} takes whole numbers, got [{low}, {high}]")
        return self

    def dimensions(self) -> list[tuple[str, str, list]]:
        """(key, kind, values) of each searched key."""
        return [(key, *next(iter(spec.items()))) for key, spec in self.space.items()]

    def overrides(self, params: dict[str, Any] | None = None) -> list[str]:
        """The dotted overrides of a trial with `params` on the base recipe: the fixed ones, the parameters, and the
        objective's metric as the validation metric (once it is known)."""
        metric = [f"evaluation.metric={self.objective.metric}"] if self.objective.metric else []
        return [*(override(k, v) for k, v in {**self.fixed, **(params or {})}.items()), *metric]

    @property
    def direction(self) -> str:
        return self.objective.direction or ("minimize" if self.objective.metric in LOWER_IS_BETTER else "maximize")


def leaf_annotation(key: str) -> Any:
    """The type of a dotted recipe key; a one-line error naming the closest key when there is none."""
    model: type[BaseModel] = RecipeConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "the recipe"
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f"did you mean '{'.'.join([*parts[:i], close[0]])}'?" if close else f"keys of {where}: {', '.join(fields)}"
            raise ConfigError(f"space: {key!r} is not a recipe key; {hint}")
        annotation = fields[part].annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1:
            if not nested:
                raise ConfigError(f"space: {key!r}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            model = annotation
        elif nested:
            raise ConfigError(f"space: {key!r} is a section; search one of its keys ({', '.join(annotation.model_fields)})")
    return annotation


def override(key: str, value: Any) -> str:
    """A dotted `key=value` override whose value reads back as itself (JSON is YAML)."""
    return f"{key}={json.dumps(value)}"


def numeric_kinds(annotation: Any) -> set[type]:
    args = typing.get_args(annotation) or (annotation,)
    return {a for a in args if a in (int, float)}


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    """The validated sweep (its objective's metric resolved from the base recipe when it names none) and its base
    config's path. Every value the space can take is checked against the recipe schema here."""
    from peftstd.config.load import describe

    path = Path(path)
    try:
        spec = SweepSpec.model_validate(read_yaml(path))
    except ValidationError as error:
        raise ConfigError(f"sweep {str(path)!r}: {describe(error, SweepSpec)}") from None
    base = (path.parent / spec.base).resolve()
    try:
        config = load_config(base, spec.overrides())
    except ConfigError as error:
        raise ConfigError(f"sweep {str(path)!r}: base {spec.base!r} with fixed overrides: {error}") from None
    spec.objective.metric = config.evaluation.metric
    for key, kind, values in spec.dimensions():
        if key in spec.fixed:
            raise ConfigError(f"space: {key!r} is also fixed; search it or fix it, not both")
        annotation = leaf_annotation(key)
        numbers = numeric_kinds(annotation)
        if kind != "choice" and not numbers:
            raise ConfigError(f"space: {key!r} is not a number; search it with choice: [...]")
        if kind in ("uniform", "log_uniform") and float not in numbers:
            raise ConfigError(f"space: {key!r} takes whole numbers; search it with int or log_int")
        for value in values:
            try:
                load_config(base, spec.overrides({key: value}))
            except ConfigError as error:
                raise ConfigError(f"space: {key}={value!r} is not a valid recipe: {error}") from None
    return spec, base
