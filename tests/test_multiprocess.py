"""Two real CPU processes over gloo: both ranks train, only rank 0 writes the run directory.

`accelerate launch --cpu --num_processes 2` silently runs ONE process; `--multi_gpu` without a GPU
gives two gloo ranks, so that is what the README documents and what this test checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import kill_after_checkpoints, recipe_command, run_recipe, tiny_overrides

from peftstd.training.threads import physical_cores

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
TWO_CPU_PROCESSES = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                     "--mixed_precision", "no", "--dynamo_backend", "no"]


def test_two_cpu_processes_train_as_two_ranks_and_only_rank0_writes(tiny_model, sentiment_file, tmp_path):
    result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "ddp"), launcher=TWO_CPU_PROCESSES)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "ddp"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 2
    # 192 training rows, batch 16 per rank x 2 ranks -> 6 optimizer steps per epoch
    assert manifest["training"]["steps_per_epoch"] == 6
    threads = manifest["training"]["cpu_threads"]  # each rank its share of the physical cores
    assert threads["threads"] == max(1, physical_cores() // 2) and "2 process(es)" in threads["reason"]
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() and "tensorboard" not in p.parts)
    assert all(path.startswith("ddp/") for path in written)
    assert sum(1 for p in (run / "tensorboard").iterdir()) == 1, "more than one process wrote TensorBoard events"
    assert result.stderr.count("run directory") <= 1 and result.stdout.count("run directory:") == 1
    test_rows = (run / "predictions" / "test.jsonl").read_text().splitlines()
    assert len(test_rows) == manifest["data"]["sizes"]["test"]  # gathered once, no duplicated padding rows


def test_two_process_run_resumes_after_sigkill_to_identical_metrics(tiny_model, sentiment_file, tmp_path):
    extra = ["training.max_steps=24", "evaluation.every_steps=6", "output.checkpoint_every_steps=3"]
    reference = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "reference", *extra), launcher=TWO_CPU_PROCESSES)
    assert reference.returncode == 0, reference.stderr[-3000:]

    args = tiny_overrides(tiny_model, sentiment_file, tmp_path, "killed", *extra)
    kill_after_checkpoints(recipe_command(args, TWO_CPU_PROCESSES), tmp_path / "killed", count=1)
    resumed = run_recipe(args, launcher=TWO_CPU_PROCESSES)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    same = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("reference", "killed")]
    assert same[0] == same[1]
    rng = __import__("torch").load(max((tmp_path / "killed" / "checkpoints").glob("step-*")) / "rng.pt", weights_only=False)
    assert len(rng) == 2  # both ranks' RNG states, written by rank 0 alone


def test_a_plain_accelerate_launch_trains_on_every_physical_core(tiny_model, sentiment_file, tmp_path):
    """`accelerate launch` without --cpu (the README's and `make demo`'s command) hands the process
    OMP_NUM_THREADS=1 on a machine without a GPU; the recipe sizes its threads itself, and says so."""
    one_process = [ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "plain", "training.max_steps=2"), launcher=one_process)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    threads = manifest["training"]["cpu_threads"]
    assert threads["launcher_omp_num_threads"] == "1" and threads["threads"] == physical_cores()
    assert manifest["hardware"]["torch_threads"] == physical_cores()
    assert f"{physical_cores()} per process" in result.stdout + result.stderr

    result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "one", "training.max_steps=2", "training.cpu_threads=1"),
                        launcher=one_process)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["training"]["cpu_threads"]["threads"] == 1 == manifest["hardware"]["torch_threads"]
