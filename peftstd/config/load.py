"""Read a recipe YAML, apply dotted `key=value` overrides, validate against the schema.

Every failure is a `ConfigError` with one line naming the field, the value and what is
allowed; unknown keys get the closest valid name.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from peftstd.config.schema import RecipeConfig
from peftstd.errors import ConfigError


def load_config(path: str | Path | None, overrides: list[str] = (), schema: type[BaseModel] = RecipeConfig):
    """The validated recipe from `path` (defaults only when None) with `overrides` applied; `schema` is
    the fine-tune recipe's unless given (recipes/pretrain.py passes its own)."""
    raw = read_yaml(path) if path is not None else {}
    for override in overrides:
        apply_override(raw, override)
    return validate(raw, schema)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in the nested dict; the value is parsed as a YAML scalar or list."""
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r} must look like section.key=value (e.g. training.epochs=2)")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        raise ConfigError(f"override {override!r}: value {text!r} is not valid YAML") from None
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def validate(raw: dict[str, Any], schema: type[BaseModel] = RecipeConfig):
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe(error, schema)) from None


def describe(error: ValidationError, schema: type[BaseModel] = RecipeConfig) -> str:
    """One line for the first problem, with a count of the others."""
    problems = error.errors(include_url=False)
    first = problems[0]
    loc = [str(part) for part in first["loc"]]
    dotted = ".".join(loc)
    if first["type"] == "extra_forbidden":
        message = f"unknown key '{dotted}'"
        suggestion = closest_key(loc, schema)
        message += f" — did you mean '{suggestion}'?" if suggestion else f"; allowed: {', '.join(keys_at(loc[:-1], schema))}"
    else:
        text = first["msg"].removeprefix("Value error, ")
        message = f"{dotted}: {text}" if loc else text
        if first["type"] not in {"value_error", "missing"} and not isinstance(first.get("input"), (dict, list)):
            message += f" (got {first.get('input')!r})"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return message


def keys_at(loc: list[str], schema: type[BaseModel] = RecipeConfig) -> list[str]:
    """The valid field names of the section at `loc`."""
    model: type[BaseModel] = schema
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def closest_key(loc: list[str], schema: type[BaseModel] = RecipeConfig) -> str | None:
    """The dotted name of the valid key closest to the unknown one, searching the whole schema."""
    wanted = ".".join(loc)
    candidates = all_dotted_keys(schema)
    match = difflib.get_close_matches(wanted, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def all_dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(all_dotted_keys(annotation, dotted + "."))
    return keys


def to_yaml(cfg: RecipeConfig) -> str:
    """The fully resolved config as YAML (every default written out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
