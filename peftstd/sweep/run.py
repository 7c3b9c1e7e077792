"""`peftstd sweep SWEEP.yaml`: hyperparameter search with Optuna over the recipe's own keys.

Every trial is the fine-tune recipe run as a user runs it (`recipes/finetune.py --config BASE key=value ...`), in a
process of its own, into SWEEP_DIR/trials/trial-NNNN: a standard run directory that `peftstd check`, `eval` and
`export` take. The recipe reports each validation value to Optuna (`sweep.trial`), whose pruner may stop it early.

Scale: the study lives in an Optuna storage (default: SQLite in the sweep folder). Starting the same command on
more machines with one `--storage` (a PostgreSQL/MySQL URL, or a journal file on a shared filesystem) runs disjoint
trials of one study, `--trials` in all. A killed sweep continues when started again: finished trials stay, and a
trial whose process died is marked failed once its heartbeat is stale and retried with the same parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from peftstd.errors import UserError
from peftstd.sweep.spec import SweepSpec
from peftstd.sweep.storage import HEARTBEAT_S, open_storage, pruner_of, redacted
from peftstd.sweep.trial import ENV

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "finetune.py"


class TrialFailed(Exception):
    """The recipe exited with an error; the trial is marked failed and the sweep goes on."""


def sampler_of(spec: SweepSpec):
    """Optuna's sampler, reseeded from the sweep's seed and the trial number before each trial: workers in other
    processes or machines start with the same seed and would otherwise draw the same parameters."""
    import optuna

    kind = optuna.samplers.RandomSampler if spec.sampler.type == "random" else optuna.samplers.TPESampler
    seed = spec.sampler.seed

    class PerTrialSeed(kind):
        def before_trial(self, study, trial) -> None:
            super().before_trial(study, trial)
            if seed is not None:  # the samplers keep their generator in `_rng` (TPE: and its startup sampler's)
                for sampler in (self, getattr(self, "_random_sampler", None)):
                    if sampler is not None:
                        sampler._rng.rng.seed((seed * 1_000_003 + trial.number) % 2**32)

    if kind is optuna.samplers.RandomSampler:
        return PerTrialSeed(seed=seed)
    return PerTrialSeed(seed=seed, n_startup_trials=spec.sampler.startup_trials, constant_liar=True)


def suggest(trial, spec: SweepSpec) -> dict:
    params = {}
    for key, kind, values in spec.dimensions():
        if kind == "choice":
            params[key] = trial.suggest_categorical(key, values)
        elif kind in ("int", "log_int"):
            params[key] = trial.suggest_int(key, int(values[0]), int(values[1]), log=kind == "log_int")
        else:
            params[key] = trial.suggest_float(key, float(values[0]), float(values[1]), log=kind == "log_uniform")
    return params


def run_sweep(spec: SweepSpec, base: Path, folder: Path, storage_url: str, study_name: str, trials: int, workers: int,
              threads: int | None):
    """Run trials until the study has `trials` complete or pruned ones; the Optuna study."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not RECIPE.is_file():
        raise UserError(f"the fine-tune recipe {str(RECIPE)!r} is missing; run peftstd sweep from a peftstd checkout")
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name=study_name, storage=storage, direction=spec.direction, sampler=sampler_of(spec),
                                pruner=pruner_of(spec.pruner), load_if_exists=True)
    recorded = study.user_attrs.get("sweep")
    mine = {"space": spec.space, "metric": spec.objective.metric, "direction": spec.direction, "base": str(base), "fixed": spec.fixed}
    if recorded is None:
        study.set_user_attr("sweep", mine)
    elif recorded != json.loads(json.dumps(mine)):
        raise UserError(f"study {study_name!r} in {redacted(storage_url)} was started with another sweep (space, objective, base or fixed "
                        "settings differ); give this one another --study name")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    lock = threading.Lock()

    def objective(trial) -> float:
        with lock:  # one budget over every worker and machine: trials numbered beyond it do not run
            ahead = [t for t in study.get_trials(deepcopy=False, states=(*counted, TrialState.RUNNING))
                     if t.number < trial.number and not t.user_attrs.get("surplus")]
            if len(ahead) >= trials:
                trial.set_user_attr("surplus", True)
                study.stop()
                raise optuna.TrialPruned("the study already has its trials")
        params = suggest(trial, spec)
        return run_trial(trial, params, spec, base, folder, storage_url, study_name, threads)

    def failed() -> int:
        return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if "error" in t.user_attrs)

    def stop_when_done(study_, _trial) -> None:
        if finished(study_) >= trials or failed() > max(2, trials // 2):
            study_.stop()

    heartbeats = getattr(storage, "get_heartbeat_interval", lambda: None)() is not None
    while True:
        optuna.storages.fail_stale_trials(study)  # trials of a dead process: failed, and queued again
        lost = failed()
        if lost > max(2, trials // 2):
            raise UserError(f"{lost} trials failed; see the logs in {folder / 'trials'}")
        done, running = finished(study), len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if done >= trials or (running and not heartbeats and done + running >= trials):
            break
        if done + running >= trials:  # the rest is running elsewhere, or in a process that died
            time.sleep(HEARTBEAT_S)
            continue
        study.optimize(objective, n_jobs=workers, catch=(TrialFailed,), callbacks=[stop_when_done], gc_after_trial=True)
    return study


def finished(study) -> int:
    """Complete and pruned trials, not counting the surplus ones that never ran."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get("surplus"))


def run_trial(trial, params: dict, spec: SweepSpec, base: Path, folder: Path, storage_url: str, study_name: str, threads: int) -> float:
    import optuna

    from peftstd.runtime.folders import RunFolder

    name = f"trial-{trial.number:04d}"
    overrides = [*spec.overrides(params), f"training.cpu_threads={threads}", f"output.dir={folder / 'trials'}", f"output.name={name}"]
    env = {**os.environ, ENV: json.dumps(
        {"storage": storage_url, "study": study_name, "trial_id": trial._trial_id, "number": trial.number, "params": params,
         "pruner": spec.pruner.model_dump()})}
    trial.set_user_attr("run", str(folder / "trials" / name))
    log = folder / "trials" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        code = subprocess.run([sys.executable, str(RECIPE), "--config", str(base), *overrides], stdout=out,
                              stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        trial.set_user_attr("error", lines[-1] if lines else f"exit code {code}")
        print(f"peftstd sweep: trial {trial.number} failed ({trial.user_attrs['error']}); log: {log}", file=sys.stderr, flush=True)
        raise TrialFailed(trial.user_attrs["error"])
    run = RunFolder(folder / "trials" / name)
    if (run.raw_manifest.get("sweep") or {}).get("state") == "pruned":
        raise optuna.TrialPruned()
    return float(run.metrics["best"]["value"])


def summary(study) -> dict:
    from optuna.trial import TrialState

    rows = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    done = [t for t in rows if t.state == TrialState.COMPLETE]
    return {"study": study.study_name, "direction": study.direction.name.lower(), "trials": rows, "sweep": study.user_attrs.get("sweep"),
            "best": study.best_trial if done else None}
