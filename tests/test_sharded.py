"""Sharded (FSDP2, DeepSpeed ZeRO-2/3) and multi-machine training with the shipped Accelerate configs, for real on
CPU over gloo.

Accelerate alone turns `--use_fsdp` into plain DDP on a CPU-only machine and does not start DeepSpeed there; these
tests check that the recipe got what the config asks for (FSDP's `DTensor` shards and module class, DeepSpeed's
engine and ZeRO stage), that what it saves is the stock one-process format and matches a one-process run of the
same data, that a killed sharded run resumes to identical metrics, and that two "machines" of one process each on
127.0.0.1 train one run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    RECIPE_ENV,
    REPO,
    free_port,
    kill_after_checkpoints,
    peftstd,
    recipe_command,
    run_recipe,
    tiny_overrides,
    write_jsonl,
)

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
CONFIGS = REPO / "recipes" / "accelerate"
LEARN = ["training.learning_rate=0.01", "training.max_steps=12", "evaluation.every_steps=6"]


def launcher(config: str, *extra: str) -> list[str]:
    return [ACCELERATE, "launch", "--config_file", str(CONFIGS / f"{config}.yaml"), *extra]


def ours_in_traceback(stderr: str) -> bool:
    """Whether a traceback passes through the recipe or peftstd (the launcher prints its own when a worker exits
    non-zero, ChildFailedError, whatever the worker said)."""
    return "recipes/finetune.py\", line" in stderr or "/peftstd/" in stderr


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


SHARDED = ("fsdp", "deepspeed_zero2", "deepspeed_zero3")


def test_sharded_training_on_cpu_saves_the_stock_format_and_matches_one_process(tiny_model, sentiment_file, tmp_path):
    """One process at batch 32, DDP, FSDP and DeepSpeed ZeRO-2/3 at 16 per process: the same examples per step (no
    length grouping, whose mega-batches depend on the batch size; no dropout, whose masks depend on the split), so
    the same model."""
    from safetensors.torch import load_file

    same = [*LEARN, "training.group_by_length=false", "regularization.dropout=0", "lora.dropout=0"]
    one = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "one", *same, "training.batch_size=32"))
    assert one.returncode == 0, one.stderr[-3000:]
    banners = {}
    for kind in ("ddp", *SHARDED):
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, kind, *same), launcher=launcher(kind))
        assert result.returncode == 0, result.stderr[-3000:]
        banners[kind] = result.stdout + result.stderr
    assert "FSDP (" in banners["fsdp"] and "DeepSpeed ZeRO-3 (DeepSpeedEngine)" in banners["deepspeed_zero3"]  # what the run got
    got = {k: manifest(tmp_path / k)["training"]["distributed"] for k in ("ddp", *SHARDED)}
    assert got["ddp"] == {"requested": "ddp", "type": "MULTI_CPU", "wrapper": "DistributedDataParallel", "layout": None,
                          "sharded_parameters": False, "shard_units": 0, "world_size": 2, "machines": 1}
    fsdp = got["fsdp"]
    assert fsdp["requested"] == "fsdp" and fsdp["type"] == "FSDP" and fsdp["sharded_parameters"] is True
    assert fsdp["wrapper"].startswith("FSDP") and fsdp["world_size"] == 2 and fsdp["layout"] == "fsdp"
    assert fsdp["shard_units"] >= 3  # the whole model and each of the 2 BertLayers (BERT declares no _no_split_modules)
    for stage, sharded_parameters in ((2, False), (3, True)):  # ZeRO-2 splits optimizer state and gradients only
        assert got[f"deepspeed_zero{stage}"] == {"requested": "deepspeed", "type": "DEEPSPEED", "wrapper": "DeepSpeedEngine",
                                                 "layout": f"zero-{stage}", "sharded_parameters": sharded_parameters,
                                                 "shard_units": 0, "world_size": 2, "machines": 1}

    # the same model as one process, up to the order of floating-point sums
    weights = {k: load_file(tmp_path / k / "adapter" / "adapter_model.safetensors") for k in ("one", "ddp", *SHARDED)}
    assert any("lora_A" in k for k in weights["one"])
    for kind in SHARDED:  # trained (B starts at 0)
        assert all(value.abs().max() > 1e-3 for key, value in weights[kind].items() if "lora_B" in key), kind
    predictions = {k: [json.loads(line) for line in (tmp_path / k / "predictions" / "test.jsonl").read_text().splitlines()]
                   for k in weights}
    for kind in ("ddp", *SHARDED):
        assert weights[kind].keys() == weights["one"].keys()
        for key, value in weights["one"].items():
            assert (value - weights[kind][key]).abs().max() < 1e-5, (kind, key)
        assert [p["prediction"] for p in predictions[kind]] == [p["prediction"] for p in predictions["one"]]
        assert max(abs(a - b) for p, q in zip(predictions[kind], predictions["one"]) for a, b in zip(p["logits"], q["logits"])) < 1e-5

    # stock transformers + peft in one process reload the adapter and reproduce the run's own test predictions
    for kind in ("fsdp", "deepspeed_zero3"):
        checked = peftstd("check", str(tmp_path / kind))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "loads with stock libraries: peft" in checked.stdout


def test_causal_lm_sft_under_zero3_matches_one_process_and_generates(tiny_llama, tmp_path):
    """Generation with parameters partitioned across ranks (transformers keeps the ranks in step), LoRA without a
    task head (peft's optimizer then has one parameter group), and validation loss over an uneven last batch."""
    from safetensors.torch import load_file
    from test_causal_lm import qa_rows

    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(240))
    common = [f"model.name={tiny_llama}", f"data.source={data}", f"output.dir={tmp_path}", "task.type=causal-lm",
              "evaluation.metric=loss", "model.max_length=32", "evaluation.batch_size=16", "training.precision=fp32",
              "training.max_steps=20", "training.learning_rate=0.01", "evaluation.every_steps=10", "generation.max_new_tokens=4",
              "generation.samples=16", "lora.rank=8", "training.group_by_length=false", "regularization.dropout=0", "lora.dropout=0"]
    one = run_recipe([*common, "output.name=one", "training.batch_size=32"])
    assert one.returncode == 0, one.stderr[-3000:]
    zero3 = run_recipe([*common, "output.name=zero3", "training.batch_size=16"], launcher=launcher("deepspeed_zero3"))
    assert zero3.returncode == 0, zero3.stderr[-3000:]
    metrics = {k: json.loads((tmp_path / k / "metrics.json").read_text()) for k in ("one", "zero3")}
    # 24 validation rows over 2 ranks of 16: one rank's last batch repeats 8 rows, which must not count
    assert metrics["zero3"]["base_model"]["validation"]["perplexity"] == pytest.approx(metrics["one"]["base_model"]["validation"]["perplexity"], rel=1e-6)
    assert metrics["zero3"]["test"]["loss"] == pytest.approx(metrics["one"]["test"]["loss"], abs=1e-5)
    weights = {k: load_file(tmp_path / k / "adapter" / "adapter_model.safetensors") for k in ("one", "zero3")}
    assert max(float((weights["one"][k] - weights["zero3"][k]).abs().max()) for k in weights["one"]) < 1e-5
    generated = {k: (tmp_path / k / "predictions" / "test.jsonl").read_text() for k in ("one", "zero3")}
    assert generated["one"] == generated["zero3"]


@pytest.mark.parametrize(("config", "layout"), [("fsdp", "FSDP"), ("deepspeed_zero2", "ZERO-2"), ("deepspeed_zero3", "ZERO-3")])
def test_a_killed_sharded_run_resumes_to_identical_metrics(tiny_model, sentiment_file, tmp_path, config, layout):
    extra = ["training.max_steps=18", "evaluation.every_steps=6", "output.checkpoint_every_steps=3"]
    reference = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "reference", *extra), launcher=launcher(config))
    assert reference.returncode == 0, reference.stderr[-3000:]
    args = tiny_overrides(tiny_model, sentiment_file, tmp_path, "killed", *extra)
    kill_after_checkpoints(recipe_command(args, launcher(config)), tmp_path / "killed", count=2)
    # its optimizer state is keyed by name (FSDP) or split per rank (ZeRO): an unsharded launch refuses it in one line
    unsharded = run_recipe(args, launcher=launcher("ddp"))
    assert unsharded.returncode != 0 and f"was written by a sharded ({layout}) run" in unsharded.stderr
    resumed = run_recipe(args, launcher=launcher(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    same = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("reference", "killed")]
    assert same[0] == same[1]


@pytest.mark.parametrize(("config", "override", "refusal"), [
    ("fsdp", "method=adalora", "FSDP cannot train with method 'adalora'"),
    ("fsdp", "training.optimizer=adamw_8bit", "FSDP cannot train with training.optimizer 'adamw_8bit'"),
    ("deepspeed_zero2", "method=adalora", "DeepSpeed cannot train with method 'adalora'"),
    ("deepspeed_zero2", "training.max_grad_norm=0.5", "DeepSpeed cannot train with the launch's gradient_clipping 1.0 "
                                                      "(training.max_grad_norm is 0.5)"),
    ("deepspeed_zero3", "training.precision=fp16", "training.precision fp16 does not run under DeepSpeed"),
])
def test_sharded_launches_refuse_what_they_cannot_do_in_one_line(tiny_model, sentiment_file, tmp_path, config, override, refusal):
    extra = ["--gradient_clipping", "1.0"] if "max_grad_norm" in override else []  # DeepSpeed's clipping set at launch
    result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "refused", override), launcher=launcher(config, *extra))
    assert result.returncode != 0
    assert refusal in result.stderr and not ours_in_traceback(result.stderr)
    assert not (tmp_path / "refused").exists()


def test_a_deepspeed_launch_without_deepspeed_installed_is_one_line(monkeypatch):
    import importlib.util

    from peftstd.errors import UserError
    from peftstd.training import sharding

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch --use_deepspeed` sets
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(UserError, match=r"asks for DeepSpeed, which is not installed: pip install 'peftstd\[deepspeed\]'"):
        sharding.accelerator_options("fp32")


def test_two_machines_on_loopback_train_one_run(tiny_model, sentiment_file, tmp_path):
    """Two "machines" of one process each, as `accelerate launch` is run on each node of a cluster."""
    port = str(free_port())
    args = tiny_overrides(tiny_model, sentiment_file, tmp_path, "nodes", "training.max_steps=6", "evaluation.every_steps=3")
    machines = [subprocess.Popen(recipe_command(args, launcher("ddp", "--num_machines", "2", "--machine_rank", str(rank),
                                                               "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                                                               "--num_processes", "2")),
                                 env=RECIPE_ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for rank in (0, 1)]
    outputs = [m.communicate(timeout=300) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    distributed = manifest(tmp_path / "nodes")["training"]["distributed"]
    assert distributed["world_size"] == 2 and distributed["machines"] == 2 and distributed["type"] == "MULTI_CPU"
    assert [p.name for p in tmp_path.iterdir() if not p.is_symlink()] == ["nodes"]  # one run directory, written by machine 0
    assert "run directory:" in outputs[0][0] and "run directory:" not in outputs[1][0]


def test_pretraining_shards_and_saves_the_same_model_as_ddp(tiny_model, tmp_path):
    from conftest import synthetic_rows
    from safetensors.torch import load_file

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in synthetic_rows(300, seed=4)) + "\n")
    pretrain = [str(REPO / "recipes" / "pretrain.py"), f"model.name={tiny_model}", f"data.source={corpus}", f"output.dir={tmp_path}",
                "objective=causal-lm", "from_scratch=gpt2-tiny", "block_size=16", "model.max_length=32", "training.batch_size=16",
                "training.precision=fp32", "training.max_steps=8", "evaluation.every_steps=4", "training.learning_rate=0.003"]
    kinds = ("ddp", "fsdp", "deepspeed_zero3")
    for kind in kinds:
        result = subprocess.run(launcher(kind) + pretrain + [f"output.name={kind}"], capture_output=True, text=True, timeout=300,
                                env=RECIPE_ENV, cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
    for kind in kinds[1:]:
        assert manifest(tmp_path / kind)["training"]["distributed"]["sharded_parameters"] is True
    metrics = {k: json.loads((tmp_path / k / "metrics.json").read_text())["best"] for k in kinds}
    weights = {k: load_file(tmp_path / k / "model" / "model.safetensors") for k in kinds}
    for kind in kinds[1:]:
        assert metrics[kind]["step"] == metrics["ddp"]["step"] and abs(metrics[kind]["loss"] - metrics["ddp"]["loss"]) < 1e-4
        assert weights[kind].keys() == weights["ddp"].keys()
        assert max(float((weights[kind][k] - weights["ddp"][k]).abs().max()) for k in weights["ddp"]) < 1e-4, kind

    masked = [a for a in pretrain if not a.startswith(("objective=", "from_scratch=", "block_size="))]
    refused = subprocess.run(launcher("fsdp") + masked + ["output.name=mlm"], capture_output=True, text=True, timeout=300,
                             env=RECIPE_ENV, cwd=REPO)
    assert refused.returncode != 0 and "FSDP cannot train with objective 'masked-lm'" in refused.stderr
    # DeepSpeed does train masked-LM (BERT's decoder is tied to the embeddings): the same model as DDP
    for kind in ("ddp", "deepspeed_zero3"):
        result = subprocess.run(launcher(kind) + masked + [f"output.name=mlm-{kind}"], capture_output=True, text=True, timeout=300,
                                env=RECIPE_ENV, cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
    ddp, zero3 = (load_file(tmp_path / f"mlm-{k}" / "model" / "model.safetensors") for k in ("ddp", "deepspeed_zero3"))
    assert ddp.keys() == zero3.keys() and max(float((ddp[k] - zero3[k]).abs().max()) for k in ddp) < 1e-4
