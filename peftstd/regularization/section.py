"""The `regularization:` section of the recipe schema (import-light: no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peftstd.basics.section import Section

AugmentOperation = Literal["delete", "swap", "insert"]


class AugmentationSection(Section):
    copies: int = Field(0, ge=0, le=20, description="Augmented copies added per training example (0 disables augmentation).")
    rate: float = Field(0.1, gt=0, le=0.5, description="Share of an example's words each augmented copy changes.")
    operations: list[AugmentOperation] = Field(
        ["delete", "swap", "insert"], min_length=1,
        description="Edits drawn at random per change: delete a word, swap two words, insert an in-vocabulary word.")


class RegularizationSection(Section):
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Override every dropout probability of the model config (hidden, attention, classifier); null keeps the model's.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss (0 disables).")
    fgm_epsilon: float | None = Field(
        None, gt=0, description="Adversarial training: FGM perturbation of the input embeddings with this L2 norm per example; null disables.")
    augmentation: AugmentationSection = Field(
        default_factory=AugmentationSection, description="Random word deletion/swap/insertion on the training split only (text classification).")
