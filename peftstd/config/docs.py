"""Generate the defaults table of the standard (`peftstd defaults`, `docs/defaults.md`) from the schema."""

from __future__ import annotations

import json
import typing

from pydantic import BaseModel

from peftstd.config.schema import SCHEMA_VERSION, RecipeConfig
from peftstd.methods import METHODS


def is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return text or str(annotation).replace("typing.", "")


def field_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if is_section(field.annotation):
            rows.extend(field_rows(field.annotation, dotted + "."))
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((dotted, type_name(field.annotation), json.dumps(default), field.description or ""))
    return rows


def defaults_markdown(more: tuple[tuple[str, type[BaseModel]], ...] = ()) -> str:
    lines = [
        f"# The peftstd recipe standard, schema {SCHEMA_VERSION}",
        "",
        "Generated from `peftstd/config/schema.py` by `peftstd defaults`; do not edit by hand.",
        "Every key below may be set in a recipe YAML or overridden on the command line as `key=value`.",
        "",
        "## Recommended learning rate per method",
        "",
        "Used when `training.learning_rate` is omitted.",
        "",
        "| method | learning rate |",
        "|---|---|",
    ]
    for name in METHODS:
        section = RecipeConfig.model_fields[name].annotation
        lines.append(f"| `{name}` | {section.recommended_learning_rate:g} |")
    lines += ["", "## Every key, its type and its default", ""]
    lines += key_table(RecipeConfig)
    from peftstd.config.pretrain import PretrainConfig

    lines += ["", "## Pretraining configs (`recipes/pretrain.py`)", ""] + key_table(PretrainConfig)
    for heading, schema in more:
        lines += ["", f"## {heading}", ""] + key_table(schema)
    return "\n".join(lines) + "\n"


def key_table(schema: type[BaseModel]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, kind, default, description in field_rows(schema):
        kind = kind.replace("|", "\\|")
        lines.append(f"| `{key}` | `{kind}` | `{default}` | {description} |")
    return lines
