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

TASK_METRICS: dict[str, tuple[str, ...]] = {"text-classification": CLASSIFICATION_METRICS}
LOWER_IS_BETTER = {"loss"}


def get_task(name: str):
    """The task implementation registered under `name`."""
    from peftstd.tasks.classification import TextClassification

    return {"text-classification": TextClassification}[name]()
