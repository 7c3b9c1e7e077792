"""Reliability: a SIGKILLed run resumes to the metrics of an uninterrupted one; torn checkpoints are
never loaded; a failed checkpoint write keeps the previous one; the same seed gives the same run."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import kill_after_checkpoints, recipe_command, run_recipe, tiny_overrides
from safetensors.torch import load_file

LONG = ["training.max_steps=48", "evaluation.every_steps=6", "output.checkpoint_every_steps=3", "training.log_every_steps=2"]


def finished_outputs(run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((run / "metrics.json").read_text()), load_file(run / "adapter" / "adapter_model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    metrics_a, weights_a = finished_outputs(a)
    metrics_b, weights_b = finished_outputs(b)
    assert metrics_a == metrics_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.parametrize("extra", [[], ["training.optimizer=adamw_8bit", "lora.rank=128"]], ids=["adamw", "adamw_8bit"])
def test_sigkilled_run_resumes_from_last_good_checkpoint_to_identical_metrics(tiny_model, sentiment_file, tmp_path, extra):
    """adamw_8bit at rank 128: LoRA matrices of 4096+ values, so bitsandbytes keeps their optimizer state in 8 bits."""
    reference = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "reference", *LONG, *extra))
    assert reference.returncode == 0, reference.stderr[-2000:]

    args = tiny_overrides(tiny_model, sentiment_file, tmp_path, "killed", *LONG, *extra)
    kill_after_checkpoints(recipe_command(args), tmp_path / "killed")
    checkpoints = tmp_path / "killed" / "checkpoints"

    # Tear the newest checkpoint: resume must skip it and use the one before.
    newest = max(p.parent for p in checkpoints.glob("step-*/checksums.json"))
    blob = bytearray((newest / "trainable.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (newest / "trainable.safetensors").write_bytes(bytes(blob))

    resumed = run_recipe(args)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"skipping checkpoint {newest.name}: trainable.safetensors does not match its sha256" in resumed.stderr
    assert "resuming from" in resumed.stderr
    assert json.loads((tmp_path / "killed" / "manifest.json").read_text())["training"]["resumed"] is True
    assert_same_run(tmp_path / "reference", tmp_path / "killed")


def test_same_config_and_seed_give_identical_metrics_and_weights(tiny_model, sentiment_file, tmp_path):
    for name in ("first", "second"):
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, name, "training.max_steps=12"))
        assert result.returncode == 0, result.stderr[-2000:]
    assert_same_run(tmp_path / "first", tmp_path / "second")


def test_resume_flag_without_unfinished_run_is_a_one_line_error(tmp_path):
    (tmp_path / "done").mkdir()
    result = run_recipe(["--resume", str(tmp_path / "nothing")])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "is not a run directory" in result.stderr


class SingleProcess:
    is_main_process, num_processes, process_index, scaler, distributed_type = True, 1, 0, None, DistributedType.NO

    def wait_for_everyone(self):
        pass


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from peftstd.methods.lora import Lora
    from peftstd.run import checkpoints as module
    from peftstd.run.checkpoints import Checkpoints, CheckpointWriteError, TrainerState, verify

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    store = Checkpoints(tmp_path / "checkpoints", keep_last=2, accelerator=SingleProcess())
    store.save(TrainerState(step=3), model, optimizer, scheduler, Lora(), None)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module.torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError) as caught:
        store.save(TrainerState(step=6), model, optimizer, scheduler, Lora(), None)
    assert str(caught.value) == "could not write checkpoint step-00000006 (No space left on device); the previous checkpoint step-00000003 is intact"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]
    assert verify(tmp_path / "checkpoints" / "step-00000003") is None
