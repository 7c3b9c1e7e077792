"""What a task provides to the recipe: head, label space, encoding, metrics, report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


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

    def head_modules(self, model) -> list[str]:
        """Names of the task-head modules, always trained and saved whatever the method."""
        return [name for name in self.head_candidates if hasattr(model, name)]
