"""`peftstd sweep`: validation before any trial, and a 4-trial study on the tiny model run by two worker processes
sharing one SQLite storage, whose every trial is a run directory and whose best.yaml reproduces the best trial."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml
from conftest import RECIPE, RECIPE_ENV, REPO, peftstd


def sweep_file(folder, tiny_model, sentiment_file, **extra) -> str:
    base = folder / "base.yaml"
    base.write_text(yaml.safe_dump({"model": {"name": str(tiny_model), "max_length": 32}, "data": {"source": str(sentiment_file)},
                                    "training": {"batch_size": 16, "precision": "fp32", "max_steps": 8},
                                    "evaluation": {"batch_size": 16, "every_steps": 2}, "output": {"tensorboard": False}}))
    spec = {"base": "base.yaml", "fixed": {"training.seed": 3},
            "space": {"training.learning_rate": {"log_uniform": [1.0e-4, 5.0e-2]}, "lora.rank": {"choice": [2, 4, 8]}},
            "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "median", "startup_trials": 2, "warmup_evaluations": 1},
            "trials": 4, **extra}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(spec))
    return str(folder / "sweep.yaml")


@pytest.mark.parametrize("space, message", [
    ({"training.learnig_rate": {"uniform": [0.1, 0.2]}}, "did you mean 'training.learning_rate'"),
    ({"lora": {"choice": [1, 2]}}, "is a section"),
    ({"lora.rank": {"uniform": [1, 8]}}, "takes whole numbers"),
    ({"training.scheduler": {"uniform": [1, 2]}}, "is not a number"),
    ({"training.warmup_ratio": {"uniform": [0.5, 1.5]}}, "training.warmup_ratio=1.5 is not a valid recipe"),
    ({"training.learning_rate": {"log_uniform": [0, 1]}}, "needs low > 0"),
    ({"lora.rank": {"choice": [4, 0]}}, "lora.rank=0 is not a valid recipe"),
])
def test_bad_sweeps_fail_in_one_line_before_any_trial(tiny_model, sentiment_file, tmp_path, space, message):
    path = sweep_file(tmp_path, tiny_model, sentiment_file, space=space)
    result = peftstd("sweep", path, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_two_workers_share_one_study_and_best_yaml_reproduces_the_best_trial(tiny_model, sentiment_file, tmp_path):
    import optuna

    path = sweep_file(tmp_path, tiny_model, sentiment_file)
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'study.db'}"
    command = [sys.executable, "-m", "peftstd", "sweep", path, "--out", str(out), "--storage", storage, "--study", "tiny", "--threads", "1"]
    out.mkdir()
    workers = [subprocess.Popen(command, cwd=REPO, env=RECIPE_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    time.sleep(1)
    workers.append(subprocess.Popen(command, cwd=REPO, env=RECIPE_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs

    study = optuna.load_study(study_name="tiny", storage=storage)
    ran = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert len(ran) == 4 and {t.state.name for t in ran} <= {"COMPLETE", "PRUNED"}, [(t.number, t.state) for t in study.trials]
    assert len({json.dumps(t.params, sort_keys=True) for t in ran}) == 4  # four distinct trials
    for trial in ran:
        run = out / "trials" / f"trial-{trial.number:04d}"
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["sweep"]["trial"] == trial.number and manifest["sweep"]["params"] == trial.params
        assert manifest["sweep"]["state"] == trial.state.name.lower()
        assert json.loads((run / "metrics.json").read_text())["history"]["validation"]
    assert peftstd("check", str(out / "trials" / f"trial-{ran[0].number:04d}")).returncode == 0

    best = study.best_trial
    report = (out / "sweep.md").read_text()
    assert f"**Best: trial {best.number}**" in report and "optimization_history.png" in report
    assert (out / "optimization_history.png").stat().st_size > 0
    assert peftstd("validate", str(out / "best.yaml")).returncode == 0
    rerun = subprocess.run([sys.executable, str(RECIPE), "--config", str(out / "best.yaml")], capture_output=True, text=True,
                           cwd=REPO, env={**RECIPE_ENV, "OMP_NUM_THREADS": "2"}, timeout=300)  # best.yaml's threads win
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    trial_metrics = json.loads((out / "trials" / f"trial-{best.number:04d}" / "metrics.json").read_text())
    rerun_metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert rerun_metrics["best"] == trial_metrics["best"] and rerun_metrics["best"]["value"] == best.value
    assert rerun_metrics["test"] == trial_metrics["test"] and rerun_metrics["history"] == trial_metrics["history"]
    assert json.loads((out / "best" / "manifest.json").read_text())["training"]["cpu_threads"]["threads"] == 1


def test_a_killed_sweep_continues_and_retries_the_trial_it_lost(tiny_model, sentiment_file, tmp_path):
    import os
    import signal

    import optuna
    import sqlalchemy

    path = sweep_file(tmp_path, tiny_model, sentiment_file, trials=3, pruner={"type": "none"})
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'study.db'}"
    command = [sys.executable, "-m", "peftstd", "sweep", path, "--out", str(out), "--study", "killed", "--threads", "1"]
    first = subprocess.Popen(command, cwd=REPO, env=RECIPE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    states: list[str] = []
    while time.monotonic() < deadline and not (states.count("COMPLETE") >= 1 and "RUNNING" in states):
        time.sleep(0.5)
        if not (out / "study.db").exists():  # let the sweep create its storage; loading it first would create it here
            continue
        try:
            states = [t.state.name for t in optuna.load_study(study_name="killed", storage=storage).trials]
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the study, or the database's schema, is not created yet
            states = []
        assert first.poll() is None, "the sweep ended before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and the trial's recipe process with it
    first.wait()

    again = subprocess.run(command, cwd=REPO, env=RECIPE_ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert [t.state.name for t in trials].count("FAIL") == 1, [(t.number, t.state.name, t.params) for t in trials]
    [lost] = [t for t in trials if t.state.name == "FAIL"]
    assert len(done) == 3 and lost.params in [t.params for t in done if t.number > lost.number]  # retried with its parameters


def test_workers_opening_a_new_database_at_once_all_get_the_storage(tmp_path):
    """Workers started together race to create a new SQLite database's schema; without retries one of two failed in
    10 of 12 tries here ("table ... already exists"), and the sweep exited with a storage error."""
    opener = "import sys; from peftstd.sweep.run import open_storage; open_storage(sys.argv[1]); print('opened')"
    for attempt in range(4):
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        workers = [subprocess.Popen([sys.executable, "-c", opener, url], cwd=REPO, env=RECIPE_ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for _ in range(3)]
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0 and out.strip() == "opened", err[-1000:]


def test_a_trial_process_prunes_with_the_sweeps_own_pruner(tmp_path):
    """The recipe's side rebuilds the sweep's pruner (Optuna's storage keeps no pruner): with warmup_evaluations=1
    a poor trial survives its first report and is pruned at its second."""
    import optuna

    from peftstd.sweep.trial import SweepTrial

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(2):
        done = study.ask()
        for step, value in ((10, 0.8), (20, 0.9)):
            done.report(value, step)
        study.tell(done, 0.9)
    trial = study.ask()
    reporter = SweepTrial(storage, "s", trial._trial_id, trial.number, {}, {"type": "median", "startup_trials": 2, "warmup_evaluations": 1})
    assert not reporter.should_prune(10, 0.1)  # Optuna's default MedianPruner (5 startup trials) would never prune here
    assert reporter.should_prune(20, 0.1) and reporter.record()["state"] == "pruned"
    none = study.ask()
    quiet = SweepTrial(storage, "s", none._trial_id, none.number, {}, {"type": "none", "startup_trials": 0, "warmup_evaluations": 0})
    assert not quiet.should_prune(10, 0.0) and not quiet.should_prune(20, 0.0)


def test_a_journal_file_storage_runs_a_sweep(tiny_model, sentiment_file, tmp_path):
    """`--storage journal:PATH`: Optuna's journal file (for a shared filesystem), opened the same way by the sweep and
    by each trial's recipe process."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = sweep_file(tmp_path, tiny_model, sentiment_file, trials=2)
    journal = tmp_path / "sweep" / "journal.log"
    result = peftstd("sweep", path, "--out", str(tmp_path / "sweep"), "--storage", f"journal:{journal}", "--threads", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    study = optuna.load_study(study_name="sweep", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"] and (tmp_path / "sweep" / "best.yaml").is_file()
