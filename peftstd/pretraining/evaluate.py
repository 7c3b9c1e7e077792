"""Validation of a language model on fixed batches: token-weighted loss, perplexity, masked-token accuracy."""

from __future__ import annotations

import math

import torch

from peftstd.tasks.base import IGNORE


def fixed_masks(split, collator, batch_size: int, seed: int) -> list[dict]:
    """Validation batches collated once with a seeded generator: every evaluation, and the starting
    model's, scores exactly the same masked positions."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return [collator(split.features[i : i + batch_size]) for i in range(0, len(split.features), batch_size)]


@torch.no_grad()
def evaluate_lm(model, batches: list[dict], accelerator, causal: bool) -> dict[str, float]:
    """Mean cross-entropy over every predicted token (not a mean of batch means), exp of it, and
    the share of predicted tokens whose argmax is right (masked-LM accuracy; next-token accuracy for CLM),
    and, for BERT's pretraining heads, next-sentence accuracy. Every process scores every batch: validation
    sets here are small."""
    model.eval()
    total_loss, total_tokens, correct, pairs, pairs_correct = 0.0, 0, 0, 0, 0
    for batch in batches:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            output = model(**{k: v for k, v in batch.items() if k not in ("labels", "next_sentence_label")})
        if "next_sentence_label" in batch:
            pairs += len(batch["next_sentence_label"])
            pairs_correct += int((output.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum())
        logits = (output.prediction_logits if "prediction_logits" in output else output.logits).float()
        labels = batch["labels"]
        if causal:  # position t predicts token t + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
        scored = labels != IGNORE
        total_loss += torch.nn.functional.cross_entropy(logits[scored], labels[scored], reduction="sum").item()
        total_tokens += int(scored.sum())
        correct += int((logits[scored].argmax(-1) == labels[scored]).sum())
    model.train()
    loss = total_loss / max(total_tokens, 1)
    metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(total_tokens, 1), "tokens": total_tokens}
    return metrics | ({"next_sentence_accuracy": pairs_correct / pairs} if pairs else {})
