"""The recipe schema: defaults, strictness, suggestions, cross-field checks, overrides."""

from __future__ import annotations

import pytest

from peftstd.config import SCHEMA_VERSION, RecipeConfig, load_config
from peftstd.config.load import all_dotted_keys
from peftstd.errors import ConfigError


def error_of(overrides: list[str], path=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_validate_and_resolve_the_method_learning_rate():
    cfg = load_config(None)
    assert cfg.schema_version == SCHEMA_VERSION
    assert cfg.method == "lora" and cfg.learning_rate() == 5e-4
    assert load_config(None, ["method=full"]).learning_rate() == 5e-5
    assert load_config(None, ["method=full", "training.learning_rate=2e-5"]).learning_rate() == 2e-5


def test_unknown_key_names_the_closest_valid_key():
    assert error_of(["lora.rnak=4"]) == "unknown key 'lora.rnak' — did you mean 'lora.rank'?"
    assert "did you mean 'training.epochs'" in error_of(["training.epoch=2"])


def test_unknown_key_without_a_close_match_lists_the_allowed_keys():
    message = error_of(["zzz=1"])
    assert "unknown key 'zzz'" in message and "training" in message


def test_wrong_type_names_the_field_and_the_value():
    message = error_of(["training.learning_rate=fast"])
    assert message.startswith("training.learning_rate:") and "'fast'" in message


def test_out_of_range_value_is_rejected():
    assert error_of(["lora.dropout=1.5"]).startswith("lora.dropout:")
    assert error_of(["training.batch_size=0"]).startswith("training.batch_size:")


def test_choice_fields_list_the_allowed_values():
    message = error_of(["method=prefix"])
    assert "'adalora', 'adapter', 'full' or 'lora'" in message


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["adalora.target_rank=32", "adalora.init_rank=8"], "must not exceed init_rank"),
        (["adalora.warmup_fraction=0.6", "adalora.final_fraction=0.5"], "must be below 1"),
        (["data.split.train=0.9"], "must sum to 1.0"),
        (["evaluation.metric=bleu"], "not a text-classification metric"),
        (["schema_version=2.0"], "not supported"),
    ],
)
def test_impossible_combinations_fail_before_anything_loads(overrides, fragment):
    assert fragment in error_of(overrides)


def test_overrides_set_nested_values_and_parse_yaml():
    cfg = load_config(None, ["lora.target_modules=[query, value]", "data.split.train=0.7", "data.split.test=0.2", "training.max_grad_norm=null"])
    assert cfg.lora.target_modules == ["query", "value"]
    assert cfg.data.split.train == 0.7
    assert cfg.training.max_grad_norm is None


@pytest.mark.parametrize("bad", ["training.epochs", "=3", "training..epochs=1"])
def test_malformed_override_is_a_config_error(bad):
    assert "must look like section.key=value" in error_of([bad])


def test_override_into_a_value_is_refused():
    assert "is a value, not a section" in error_of(["method=lora", "method.rank=3"])


def test_numeric_schema_version_is_read_as_text():
    assert load_config(None, ["schema_version=1.0"]).schema_version == "1.0"


def test_yaml_problems_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  name: [unclosed\n")
    assert "is not valid YAML at line" in error_of([], broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    assert "must hold a mapping" in error_of([], listing)
    assert "does not exist" in error_of([], tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"model:\n  name: \xff\xfe\n")
    assert "not UTF-8" in error_of([], binary)


def test_every_field_has_a_description_and_a_default():
    schema = RecipeConfig.model_json_schema()
    missing = []

    def walk(node, path):
        for name, prop in node.get("properties", {}).items():
            if "$ref" in prop:
                walk(schema["$defs"][prop["$ref"].split("/")[-1]], f"{path}{name}.")
            elif not prop.get("description") or "default" not in prop:
                missing.append(f"{path}{name}")

    walk(schema, "")
    assert not missing
    assert len(all_dotted_keys(RecipeConfig)) > 40
