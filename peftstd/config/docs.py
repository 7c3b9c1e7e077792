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
        optional = [a for a in typing.get_args(field.annotation) if is_section(a)]  # e.g. `QuantizationSection | None`
        if is_section(field.annotation):
            rows.extend(field_rows(field.annotation, dotted + "."))
        elif optional:
            rows.append((dotted, type_name(field.annotation).replace("peftstd.models.quantization.", ""), "null", field.description or ""))
            rows.extend((key, kind, default, f"(when {dotted} is set) {text}") for key, kind, default, text in field_rows(optional[0], dotted + "."))
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
        "## Methods",
        "",
        "Registered in `peftstd/methods/` (one module each); the learning rate is used when `training.learning_rate` is omitted.",
        "",
        "| method | what it is | library | learning rate | quantized base |",
        "|---|---|---|---|---|",
    ]
    for name, method in METHODS.items():
        lines.append(f"| `{name}` | {method.summary} | {method.library} | {method.recommended_learning_rate:g} | "
                     f"{'yes' if method.quantized_base else 'no'} |")
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
