"""The bad-input catalogue: each mistake exits 2 with one line naming the problem, no traceback,
and writes nothing. Plus a hypothesis fuzz of the config loader: no input may raise anything else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_recipe, synthetic_rows, tiny_overrides, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftstd.config import load_config
from peftstd.config.load import all_dotted_keys
from peftstd.config.schema import RecipeConfig
from peftstd.errors import ConfigError


@pytest.fixture(scope="module")
def broken_models(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken-models")
    no_weights = root / "no-weights"
    shutil.copytree(tiny_model, no_weights)
    (no_weights / "model.safetensors").unlink()
    no_tokenizer = root / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model / name, no_tokenizer / name)
    from transformers import MobileBertConfig, MobileBertModel

    unsupported = root / "mobilebert"
    MobileBertModel(MobileBertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, embedding_size=8, true_hidden_size=8, intra_bottleneck_size=8)).save_pretrained(unsupported)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_model / name, unsupported / name)
    return {"no-weights": no_weights, "no-tokenizer": no_tokenizer, "unsupported": unsupported}


def data_file(tmp_path: Path, kind: str) -> Path:
    if kind == "empty":
        path = tmp_path / "empty.jsonl"
        path.write_text("")
        return path
    if kind == "latin1":
        path = tmp_path / "latin1.jsonl"
        path.write_bytes(b'{"text": "caf\xe9", "label": "positive"}\n')
        return path
    rows = synthetic_rows(60)
    if kind == "missing-label":
        del rows[5]["label"]
    return write_jsonl(tmp_path / f"{kind}.jsonl", rows)


CASES = {
    "unknown key": (["lora.rnak=8"], "unknown key 'lora.rnak' — did you mean 'lora.rank'?"),
    "wrong type": (["training.epochs=many"], "training.epochs:"),
    "out of range": (["lora.dropout=2"], "lora.dropout:"),
    "adalora with too few steps": (["method=adalora", "training.max_steps=4"], "adalora: the run has 4 optimizer steps"),
    "missing data file": (["data.source={tmp}/nope.jsonl"], "does not exist"),
    "empty data file": (["data.source={empty}"], "is empty"),
    "row without label": (["data.source={missing-label}"], "missing text or label (missing-label.jsonl:6)"),
    "non-UTF-8 data": (["data.source={latin1}"], "is not UTF-8"),
    "unseen test label": (["data.test_source={unseen}"], "test label 'neutral'"),
    "max_length beyond the model": (["model.max_length=4096"], "exceeds the model's maximum of 64 positions"),
    "model without weights": (["model.name={no-weights}"], "has no weights"),
    "model without tokenizer": (["model.name={no-tokenizer}"], "has no tokenizer files"),
    "method unsupported by the architecture": (["model.name={unsupported}", "method=adapter"], "does not support 'mobilebert'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tiny_model, sentiment_file, broken_models, tmp_path):
    extra, expected = CASES[case]
    files = {"tmp": tmp_path, "empty": data_file(tmp_path, "empty"), "latin1": data_file(tmp_path, "latin1"),
             "missing-label": data_file(tmp_path, "missing-label"),
             "unseen": write_jsonl(tmp_path / "unseen.jsonl", [{"text": "the movie", "label": "neutral"}]), **broken_models}
    extra = [e.format(**files) for e in extra]
    out = tmp_path / "runs"
    result = run_recipe(tiny_overrides(tiny_model, sentiment_file, out, "bad", *extra))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if line.startswith("peftstd: error:")]
    assert len(message) == 1 and expected in message[0], result.stderr[-2000:]
    assert not out.exists()


def test_malformed_yaml_config_through_the_recipe(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("training:\n  epochs: [1\n")
    result = run_recipe(["--config", str(config), f"output.dir={tmp_path / 'runs'}"])
    assert result.returncode == 2 and "is not valid YAML at line" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_existing_output_folder_is_not_clobbered(tiny_model, sentiment_file, tmp_path):
    first = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "taken", "training.max_steps=2"))
    assert first.returncode == 0, first.stderr[-2000:]
    before = (tmp_path / "taken" / "manifest.json").read_bytes()
    again = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "taken", "training.max_steps=2"))
    assert again.returncode == 2 and "already exists" in again.stderr and "output.overwrite=true" in again.stderr
    assert (tmp_path / "taken" / "manifest.json").read_bytes() == before


KEYS = all_dotted_keys(RecipeConfig) + ["lora.rnak", "training.epoch", "zzz", "model.name.extra"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_fuzzed_overrides_only_ever_raise_config_errors(assignments):
    overrides = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for key, value in assignments.items()]
    try:
        load_config(None, overrides)
    except ConfigError as error:
        assert "\n" not in str(error)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_yaml_text_only_ever_raises_config_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as error:
        assert "\n" not in str(error)
