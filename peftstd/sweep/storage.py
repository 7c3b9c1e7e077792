"""Optuna's storage and pruner as a sweep opens them: shared by the sweep driver (`run.py`) and the recipe's side of
a trial (`trial.py`), which opens the same study from the trial's own process."""

from __future__ import annotations

import re
import time

from peftstd.errors import UserError
from peftstd.sweep.spec import Pruner

HEARTBEAT_S, GRACE_S = 5, 30
OPEN_ATTEMPTS = 5  # storage opens tried before a schema race or a bad URL is reported


def redacted(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str):
    """An Optuna storage with heartbeats where the storage supports them, so that trials of a killed process are
    detected and retried."""
    import warnings

    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since Optuna 2.9
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    # Workers started together on a new database race to create its schema, and SQLite fails the slower one ("table
    # ... already exists", a UNIQUE constraint on alembic_version: one of two processes, most times here); its next
    # attempt finds the schema made. An unreachable or malformed storage fails every attempt and is reported.
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2), engine_kwargs={"pool_pre_ping": True})
        except (optuna.exceptions.StorageInternalError, SQLAlchemyError, ValueError, ImportError) as error:
            if isinstance(error, (ValueError, ImportError)) or attempt + 1 == OPEN_ATTEMPTS:  # a bad URL or driver: no retry
                raise UserError(f"storage {redacted(url)!r} cannot be opened: {str(error).splitlines()[0]}") from None
            time.sleep(0.2 * (attempt + 1))


def pruner_of(pruner: Pruner):
    import optuna

    if pruner.type == "none":
        return optuna.pruners.NopPruner()
    if pruner.type == "hyperband":
        return optuna.pruners.HyperbandPruner()

    class WarmupMedian(optuna.pruners.MedianPruner):
        """Optuna's median pruner, waiting for a trial's first `warmup_evaluations` reports (its own warm-up counts
        steps, and a trial's steps are optimizer steps, spaced by the evaluation interval)."""

        def prune(self, study, trial) -> bool:
            return len(trial.intermediate_values) > pruner.warmup_evaluations and super().prune(study, trial)

    return WarmupMedian(n_startup_trials=pruner.startup_trials)
