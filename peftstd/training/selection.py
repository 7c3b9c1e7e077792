"""Best-checkpoint selection and early stopping on a configured validation metric."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from peftstd.tasks import LOWER_IS_BETTER


@dataclass
class Selection:
    metric: str
    patience: int | None
    best: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0

    def update(self, metrics: dict[str, float], step: int) -> bool:
        """Record an evaluation; True when it is the best so far."""
        value = metrics[self.metric]
        better = self.best is None or (value < self.best if self.metric in LOWER_IS_BETTER else value > self.best)
        if better:
            self.best, self.best_step, self.evaluations_without_improvement = value, step, 0
        else:
            self.evaluations_without_improvement += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evaluations_without_improvement >= self.patience

    def state(self) -> dict:
        """The progress to save in a checkpoint (the settings come from the config)."""
        return {k: v for k, v in asdict(self).items() if k not in ("metric", "patience")}
