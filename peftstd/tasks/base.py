"""What a task provides to the recipe: head, label space, encoding, metrics, report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

IGNORE = -100  # the label id PyTorch's cross-entropy skips: prompt, padding, special tokens, continuation pieces


@dataclass
class EncodedSplit:
    """Model-ready features of one split, with their token lengths (for length grouping)."""

    features: list[dict[str, Any]]
    lengths: list[int]
    truncated: int = 0  # examples cut at model.max_length
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.features)


class Task:
    name: ClassVar[str]
    peft_task_type: ClassVar[str]
    head_candidates: ClassVar[tuple[str, ...]] = ()
    card_metrics: ClassVar[tuple[tuple[str, str, str], ...]] = ()  # (metrics key, model-card type, display name)
    auto_model: ClassVar[str]  # the transformers Auto class of the task's model
    ort_model: ClassVar[str]  # optimum's ORTModel class that loads its export
    hub_task: ClassVar[str | None] = None  # the Hub's pipeline tag, where it differs from `name`
    generative: ClassVar[bool] = False
    labelled_head: ClassVar[bool] = False  # one head output per label name (num_labels, id2label in the model config)

    def __init__(self, labels: list[str] | None = None, settings: dict | None = None):
        self.labels = labels  # label names in index order, set by `label_names` or by whoever loads a run
        self.settings = settings or {}  # the `task:` section (as a dict), for tasks with settings of their own

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        """Config settings of the task head that depend on the run's labels."""
        if not self.labelled_head:
            return {}
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}

    def load_model(self, path, labels: list[str], **config_overrides):
        """The pretrained model at `path` with the task's head (fresh where the checkpoint has none)."""
        import transformers

        return getattr(transformers, self.auto_model).from_pretrained(path, **self.head_config(labels), **config_overrides)

    def check_model(self, model_config) -> None:
        """Raise `ConfigError` when the task cannot use this architecture (checked before weights load)."""

    def loss(self, model, batch, label_smoothing: float = 0.0):
        """The training loss: the model's own cross-entropy, or a label-smoothed one computed here
        (positions labelled IGNORE are skipped either way)."""
        if not label_smoothing:
            return model(**batch).loss
        import torch.nn.functional as F

        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE, label_smoothing=label_smoothing)

    def head_modules(self, model) -> list[str]:
        """Names of the task-head modules, always trained and saved whatever the method."""
        return [name for name in self.head_candidates if hasattr(model, name)]
