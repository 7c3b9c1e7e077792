"""Quantized bases (QLoRA, 8-bit) and 8-bit optimizers through bitsandbytes, and methods as plug-ins."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import RECIPE_ENV, REPO, peftstd, run_recipe, tiny_overrides


def manifest_of(run):
    return json.loads((run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def qlora_run(tiny_model, sentiment_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora")
    runs = {}
    for name, extra in {"float": [], "nf4": ["model.quantization.bits=4"]}.items():
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, out, name, "training.max_steps=12", *extra))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = out / name
    return runs


def test_a_4bit_base_trains_records_its_quantization_and_loads_with_stock_libraries(qlora_run):
    quantized, floating = manifest_of(qlora_run["nf4"]), manifest_of(qlora_run["float"])
    assert quantized["base_model"]["quantization"] == {"bits": 4, "type": "nf4", "double_quant": True, "compute_dtype": "bf16"}
    assert floating["base_model"]["quantization"] is None
    assert quantized["base_model"]["weight_bytes"] < 0.8 * floating["base_model"]["weight_bytes"]
    assert quantized["method"]["library"] == "peft"
    check = peftstd("check", str(qlora_run["nf4"]))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "peft on a 4-bit bitsandbytes base" in check.stdout


def test_a_4bit_base_run_exports_dequantized_and_is_judged_against_its_quantized_model(qlora_run, tmp_path):
    result = peftstd("export", str(qlora_run["nf4"]), "--budget", "100", "--out", str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    assert report["stages"]["load"]["base_quantized"] is True
    assert "quantized base layers dequantized to float32" in report["stages"]["merge"]["how"]
    # 2 layers x (query, key, value, attention output, intermediate, output) and the pooler
    assert report["stages"]["merge"]["how"].startswith("13 ")
    # the gate's reference is the run's own quantized model: its test accuracy as the recipe measured it
    test_accuracy = json.loads((qlora_run["nf4"] / "metrics.json").read_text())["test"]["accuracy"]
    assert report["gate"]["trained_metric"] == pytest.approx(test_accuracy, abs=1e-9)
    assert report["stages"]["merge"]["max_abs_logit_difference"] < 0.05  # bf16 compute on the 4-bit base vs float32 merged


def test_an_8bit_base_trains_with_adalora_and_loads_back(tiny_model, sentiment_file, tmp_path):
    result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "int8", "method=adalora", "model.quantization.bits=8",
                                       "training.max_steps=40", "adalora.reallocation_interval=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert manifest_of(tmp_path / "int8")["base_model"]["quantization"]["bits"] == 8
    check = peftstd("check", str(tmp_path / "int8"))
    assert check.returncode == 0 and "peft on a 8-bit bitsandbytes base" in check.stdout, check.stdout + check.stderr


def test_8bit_adamw_keeps_a_third_of_the_optimizer_state(tiny_model, sentiment_file, tmp_path):
    state = {}
    for optimizer in ("adamw", "adamw_8bit"):
        # rank 128: LoRA matrices of 4096+ values, the size from which bitsandbytes keeps 8-bit state
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, optimizer, f"training.optimizer={optimizer}", "lora.rank=128"))
        assert result.returncode == 0, result.stderr[-3000:]
        record = manifest_of(tmp_path / optimizer)["training"]["optimizer"]
        assert record["name"] == optimizer
        state[optimizer] = record["state_bytes"]
    assert state["adamw"] > 3 * state["adamw_8bit"], state


@pytest.mark.parametrize(("override", "message"), [
    ("method=full", "model.quantization needs a method that trains on a frozen quantized base (adalora, lora), not 'full'"),
    ("model.quantization.bits=3", "model.quantization.bits"),
    ("training.optimizer=sgd", "training.optimizer"),
])
def test_quantization_and_optimizer_mistakes_are_one_line_errors(tmp_path, override, message):
    extra = ["model.quantization.bits=4"] if override == "method=full" else []
    result = run_recipe([override, *extra, f"output.dir={tmp_path}"])
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_pretraining_refuses_a_quantized_base(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "pretrain.py"), "model.quantization.bits=4", f"output.dir={tmp_path}"],
                            capture_output=True, text=True, env=RECIPE_ENV, cwd=REPO)
    assert result.returncode == 2 and "pretraining trains float weights" in result.stderr and "Traceback" not in result.stderr


BITFIT = '''"""BitFit (Ben Zaken et al. 2022): only the biases and the task head train."""

from pydantic import Field

from peftstd.basics.section import Section
from peftstd.methods.base import Method, register


class BitFitSection(Section):
    include_norms: bool = Field(False, description="Also train the LayerNorm weights.")


@register
class BitFit(Method):
    name = "bitfit"
    section = BitFitSection
    library = "torch"
    recommended_learning_rate = 1e-3
    summary = "BitFit: biases only"
    weights_dir = "model"

    def apply(self, model, section, wrapping):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.endswith("bias") or name.split(".")[0] in wrapping.head_modules
                                     or (section.include_norms and "LayerNorm" in name))
        return model

    def save(self, model, out_dir, state_dict=None):
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)

    def load(self, task, base_path, weights_dir, labels, quantization=None):
        return task.load_model(weights_dir, labels)
'''


def test_a_new_method_is_one_module(tiny_model, sentiment_file, tmp_path):
    """A copy of the checkout with one more file in peftstd/methods/ trains with it: schema, docs and recipe pick it up."""
    checkout = tmp_path / "checkout"
    for folder in ("peftstd", "recipes"):
        shutil.copytree(REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "peftstd" / "methods" / "bitfit.py").write_text(BITFIT)
    env = {**RECIPE_ENV, "PYTHONPATH": str(checkout)}
    docs = subprocess.run([sys.executable, "-m", "peftstd", "defaults"], capture_output=True, text=True, env=env, cwd=checkout)
    assert "| `bitfit` | BitFit: biases only | torch | 0.001 | no |" in docs.stdout and "`bitfit.include_norms`" in docs.stdout
    result = subprocess.run([sys.executable, str(checkout / "recipes" / "finetune.py"),
                             *tiny_overrides(tiny_model, sentiment_file, tmp_path, "bitfit", "method=bitfit", "bitfit.include_norms=true")],
                            capture_output=True, text=True, env=env, cwd=checkout)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = manifest_of(tmp_path / "bitfit")
    assert manifest["method"] == {"name": "bitfit", "library": "torch", "weights_dir": "model"}
    trainable, total = manifest["parameters"]["trainable"], manifest["parameters"]["total"]
    assert 0 < trainable < total / 10
    assert (tmp_path / "bitfit" / "model" / "model.safetensors").is_file()
    check = subprocess.run([sys.executable, "-m", "peftstd", "check", str(tmp_path / "bitfit")], capture_output=True, text=True, env=env, cwd=checkout)
    assert check.returncode == 0, check.stdout + check.stderr  # the card and the stock-load check follow the registry too


def test_methods_and_config_do_not_import_each_other():
    import ast

    for path in (REPO / "peftstd" / "methods").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("peftstd.config"), f"{path.name} imports {node.module}"


def test_gradient_checkpointing_trains_to_the_same_model(tiny_model, sentiment_file, tmp_path):
    """Recomputing activations in the backward pass replays the same dropout masks (torch's checkpoint restores the
    generator that seeds them), so the run is the same run."""
    for name, extra in {"plain": [], "checkpointed": ["training.gradient_checkpointing=true"]}.items():
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, name, *extra))
        assert result.returncode == 0, result.stderr[-3000:]
    assert manifest_of(tmp_path / "checkpointed")["training"]["gradient_checkpointing"] is True
    test = [json.loads((tmp_path / name / "metrics.json").read_text())["test"] for name in ("plain", "checkpointed")]
    assert test[0]["loss"] == pytest.approx(test[1]["loss"], rel=1e-5) and test[0]["accuracy"] == test[1]["accuracy"]


def test_loftq_init_starts_a_4bit_base_closer_to_the_float_model(tiny_model):
    """lora.init=loftq: base + adapter reproduce the float encoder better than the 4-bit base alone (LoRA's B = 0)."""
    import torch

    from peftstd.config import load_config
    from peftstd.methods import Wrapping, get_method
    from peftstd.tasks import get_task

    def encoder_output(init: str | None) -> torch.Tensor:
        overrides = [f"model.name={tiny_model}", "lora.rank=8"] + (["model.quantization.bits=4", f"lora.init={init}"] if init else [])
        cfg = load_config(str(REPO / "recipes" / "configs" / "minilm_lora_sentiment.yaml"), overrides)
        task, method = get_task(cfg.task.type, settings=cfg.task.model_dump()), get_method(cfg.method)
        model = method.load_base(task, tiny_model, ["negative", "positive"], cfg.model.quantization)
        model = method.apply(model, cfg.lora, Wrapping(task.peft_task_type, task.head_modules(model), 10)).eval()
        torch.manual_seed(0)
        with torch.no_grad():
            encoder = model.get_base_model().bert
            return encoder(input_ids=torch.randint(5, encoder.config.vocab_size, (4, 12))).last_hidden_state.float()

    reference = encoder_output(None)
    plain, loftq = (float((encoder_output(init) - reference).abs().mean()) for init in ("default", "loftq"))
    assert loftq < 0.9 * plain, (plain, loftq)
