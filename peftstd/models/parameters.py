"""Parameter counts for the banner and the manifest."""

from __future__ import annotations


def parameter_counts(model) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / max(total, 1)}
