"""The recipe's side of a sweep trial: `peftstd sweep` starts the recipe with PEFTSTD_SWEEP_TRIAL set; the recipe
reports each validation value to the trial in Optuna's storage, stops when Optuna's pruner says so, and records the
sweep in its manifest. A recipe run without the variable is untouched."""

from __future__ import annotations

import json
import os

from peftstd.sweep.storage import redacted

ENV = "PEFTSTD_SWEEP_TRIAL"


class SweepTrial:
    def __init__(self, storage: str, study: str, trial_id: int, number: int, params: dict, pruner: dict):
        import optuna

        from peftstd.sweep.spec import Pruner
        from peftstd.sweep.storage import open_storage, pruner_of

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study_name, self.storage, self.number, self.params = study, storage, number, params
        # the sweep's pruner: Optuna's storage keeps trials, not the pruner a study was created with
        study_ = optuna.load_study(study_name=study, storage=open_storage(storage), pruner=pruner_of(Pruner(**pruner)))
        self.trial = optuna.trial.Trial(study_, trial_id)
        self.pruned = False

    @classmethod
    def from_env(cls) -> SweepTrial | None:
        raw = os.environ.get(ENV)
        if not raw:
            return None
        spec = json.loads(raw)
        return cls(spec["storage"], spec["study"], spec["trial_id"], spec["number"], spec["params"], spec["pruner"])

    def should_prune(self, step: int, value: float) -> bool:
        """Report the validation value at `step`; True when the pruner stops this trial."""
        self.trial.report(float(value), step)
        self.pruned = self.trial.should_prune()
        return self.pruned

    def record(self) -> dict:
        return {"study": self.study_name, "storage": redacted(self.storage), "trial": self.number, "params": self.params,
                "state": "pruned" if self.pruned else "complete"}
