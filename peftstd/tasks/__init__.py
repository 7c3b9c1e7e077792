"""Tasks: head, preprocessing, metrics and report section per task type.

`TASK_METRICS` is import-light so that the config schema can validate metric names
without importing torch.
"""

CLASSIFICATION_METRICS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "loss",
)
TOKEN_CLASSIFICATION_METRICS = ("f1", "precision", "recall", "accuracy", "loss")  # entity-level micro (seqeval); token accuracy

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "text-classification": CLASSIFICATION_METRICS,
    "token-classification": TOKEN_CLASSIFICATION_METRICS,
}
PRIMARY_METRIC = {"text-classification": "accuracy", "token-classification": "f1"}
LOWER_IS_BETTER = {"loss"}


def get_task(name: str, labels: list[str] | None = None):
    """The task implementation registered under `name` (with the run's label names, when known)."""
    from peftstd.tasks.classification import TextClassification
    from peftstd.tasks.token_classification import TokenClassification

    return {"text-classification": TextClassification, "token-classification": TokenClassification}[name](labels)
