"""The `peftstd` command line: validate, schema, defaults; bad configs exit 2 fast with one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RECIPE, REPO

CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))


def peftstd(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftstd", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(config):
    result = peftstd("validate", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


@pytest.mark.parametrize("profile", sorted((REPO / "export").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_export_profile_validates(profile):
    from peftstd.export.profile import load_profile

    loaded = load_profile(str(profile), {})
    assert loaded.format == ("gguf" if profile.stem == "gguf" else "tensorrt" if "tensorrt" in profile.stem else "onnx")


def test_one_config_per_method_is_shipped():
    from peftstd.config import load_config
    from peftstd.methods import METHODS

    methods = {load_config(path).method for path in CONFIGS if "sentiment" in path.name}
    assert methods == set(METHODS)


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["lora.rnak=4"], "did you mean 'lora.rank'"),
        (["training.learning_rate=abc"], "training.learning_rate"),
        (["adalora.target_rank=64"], "adalora"),
    ],
)
def test_recipe_rejects_bad_config_fast_with_one_line_and_writes_nothing(tmp_path, extra, fragment):
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(RECIPE), f"output.dir={tmp_path / 'runs'}", *extra], capture_output=True, text=True, cwd=tmp_path
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    assert list(tmp_path.iterdir()) == []


def test_validate_reports_errors_with_exit_code_2(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("method: lora\nlora:\n  rnak: 4\n")
    result = peftstd("validate", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == "peftstd: error: unknown key 'lora.rnak' — did you mean 'lora.rank'?"


def test_schema_prints_the_json_schema():
    result = peftstd("schema")
    schema = json.loads(result.stdout)
    assert {"model", "data", "task", "method", "training", "evaluation", "output"} <= set(schema["properties"])


def test_schema_prints_the_pretraining_schema_too():
    schema = json.loads(peftstd("schema", "--pretrain").stdout)
    assert {"objective", "masking", "block_size", "data"} <= set(schema["properties"])


def test_pretraining_configs_refuse_fine_tune_data_keys():
    refused = peftstd("validate", "recipes/configs/minilm_mlm_vader.yaml", "data.prompt_column=question")
    assert refused.returncode == 2 and "data.prompt_column is a fine-tune key" in refused.stderr
    assert peftstd("validate", "recipes/configs/minilm_mlm_vader.yaml", "data.text_column=text").returncode == 0


def test_docs_defaults_table_is_generated_from_the_schema():
    generated = peftstd("defaults").stdout
    assert (REPO / "docs" / "defaults.md").read_text() == generated, "run: peftstd defaults > docs/defaults.md"
    assert "| peft | 0.0005 | yes |" in generated and "| `full` | full fine-tuning: every weight trains | transformers | 5e-05 | no |" in generated
