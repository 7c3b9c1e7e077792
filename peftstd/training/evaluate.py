"""Evaluation over one split: loss, logits in the split's original order, task metrics."""

from __future__ import annotations

import numpy as np
import torch

from peftstd.tasks.base import IGNORE


@torch.no_grad()
def predict(model, loader, order: list[int], accelerator, autocast: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """(logits, label ids, mean loss) over a loader built by `eval_loader`, across all processes."""
    model.eval()
    logits, labels, losses = [], [], []
    for batch in loader:
        with accelerator.autocast() if autocast else torch.autocast(accelerator.device.type, enabled=False):
            output = model(**batch)
        batch_logits, batch_labels = output.logits.float(), batch["labels"]
        if batch_logits.dim() == 3:  # per-token logits: processes' batches differ in length
            batch_logits = accelerator.pad_across_processes(batch_logits, dim=1, pad_index=0)
            batch_labels = accelerator.pad_across_processes(batch_labels, dim=1, pad_index=IGNORE)
        batch_logits, batch_labels = accelerator.gather_for_metrics((batch_logits, batch_labels))
        batch_loss = accelerator.gather_for_metrics(output.loss.detach().float().reshape(1).repeat(len(batch["labels"])))
        logits.append(batch_logits.cpu())
        labels.append(batch_labels.cpu())
        losses.append(batch_loss.cpu())
    model.train()
    if logits[0].dim() == 3:  # pad every batch to the longest, so the split is one array
        longest = max(x.shape[1] for x in logits)
        logits = [torch.nn.functional.pad(x, (0, 0, 0, longest - x.shape[1])) for x in logits]
        labels = [torch.nn.functional.pad(y, (0, longest - y.shape[1]), value=IGNORE) for y in labels]
    logits_sorted = torch.cat(logits).numpy()
    labels_sorted = torch.cat(labels).numpy()
    restored = np.empty_like(logits_sorted)
    restored_labels = np.empty_like(labels_sorted)
    restored[order] = logits_sorted
    restored_labels[order] = labels_sorted
    return restored, restored_labels, float(torch.cat(losses).mean())


def evaluate(model, loader, order, accelerator, task, autocast: bool = True) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """(metrics incl. loss, logits, label ids) of one split. Tasks with an `evaluate_split` of their own
    score differently: generative ones without collecting vocabulary-sized logits, question answering
    per example across its context windows."""
    if hasattr(task, "evaluate_split"):
        return task.evaluate_split(model, loader, order, accelerator, autocast)
    logits, labels, loss = predict(model, loader, order, accelerator, autocast)
    return {**task.metrics(logits, labels), "loss": loss}, logits, labels
