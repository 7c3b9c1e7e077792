"""Regularization switches: each does what docs/defaults.md says, and each changes training."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import run_recipe, tiny_overrides
from safetensors.torch import load_file

SWITCHES = {
    "weight-decay": "training.weight_decay=0.5",
    "dropout": "regularization.dropout=0.0",
    "label-smoothing": "regularization.label_smoothing=0.2",
    "fgm": "regularization.fgm_epsilon=1.0",
    "augmentation": "regularization.augmentation.copies=1",
}


def tiny_classifier(tiny_model, **config):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2, **config)


def batch_of(tiny_model, texts, labels):
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(tiny_model)(texts, padding=True, return_tensors="pt")
    return {**encoded, "labels": torch.tensor(labels)}


@pytest.fixture(scope="module")
def switch_runs(tiny_model, sentiment_file, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("regularization")
    runs = {}
    for name, override in {"baseline": None, **SWITCHES}.items():
        extra = ["training.max_steps=3", "evaluation.every_steps=3"] + ([override] if override else [])
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, out, name, *extra))
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = out / name
    return runs


def adapter_weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_switch_changes_training(switch_runs, switch):
    baseline, changed = adapter_weights(switch_runs["baseline"]), adapter_weights(switch_runs[switch])
    assert baseline.keys() == changed.keys()
    assert any(not torch.equal(baseline[k], changed[k]) for k in baseline), f"{switch} left every trained weight unchanged"
    recorded = json.loads((switch_runs[switch] / "manifest.json").read_text())["regularization"]
    assert recorded != json.loads((switch_runs["baseline"] / "manifest.json").read_text())["regularization"] or switch == "weight-decay"
    if switch == "dropout":
        assert recorded["dropout_overrides"] == {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}


def test_augmentation_adds_copies_to_training_only(switch_runs):
    base = json.loads((switch_runs["baseline"] / "manifest.json").read_text())
    augmented = json.loads((switch_runs["augmentation"] / "manifest.json").read_text())
    assert augmented["data"]["augmented_train_examples"] == augmented["data"]["sizes"]["train"]
    assert augmented["data"]["sha256"] == base["data"]["sha256"]  # train/validation/test as read, unchanged
    assert base["data"]["augmented_train_examples"] == 0


def test_augmented_text_keeps_labels_and_uses_only_in_vocabulary_words(tiny_model):
    from transformers import AutoTokenizer

    from peftstd.data.examples import Example
    from peftstd.regularization.augment import augment_examples, augment_text, insertable_words

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [Example("the movie was great and fun", "positive", origin="a:1"), Example("a dull story", "negative", origin="a:2")]
    copies = augment_examples(rows, 3, 0.3, ["delete", "swap", "insert"], tokenizer, seed=7)
    assert len(copies) == 6 and [c.label for c in copies] == ["positive", "negative"] * 3
    assert copies == augment_examples(rows, 3, 0.3, ["delete", "swap", "insert"], tokenizer, seed=7)  # deterministic
    vocabulary = set(tokenizer.get_vocab())
    assert all(word in vocabulary for c in copies for word in c.text.split())
    words = insertable_words(tokenizer)
    text = "one two three four five six seven eight nine ten"
    assert len(augment_text(text, 0.2, ["delete"], words, random.Random(0)).split()) == 8
    assert len(augment_text(text, 0.2, ["insert"], words, random.Random(0)).split()) == 12
    swapped = augment_text(text, 0.1, ["swap"], words, random.Random(0)).split()
    assert sorted(swapped) == sorted(text.split()) and swapped != text.split()


def test_label_smoothing_is_the_smoothed_cross_entropy(tiny_model):
    from peftstd.tasks.classification import TextClassification

    model, task = tiny_classifier(tiny_model).eval(), TextClassification()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([1.5, -1.0]))  # confident logits, where smoothing matters
    batch = batch_of(tiny_model, ["great movie", "dull story and plot"], [1, 1])
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    log_p = logits.log_softmax(-1)
    expected = (-(0.9 * log_p.gather(1, batch["labels"][:, None]).squeeze(1) + 0.1 * log_p.mean(-1))).mean()
    assert torch.allclose(task.loss(model, batch, 0.1), expected, atol=1e-6)
    assert torch.allclose(task.loss(model, batch, 0.0), model(**batch).loss)
    assert not torch.allclose(task.loss(model, batch, 0.1), task.loss(model, batch, 0.0))


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable-embeddings", "frozen-embeddings"])
def test_fgm_perturbs_embeddings_along_the_gradient_with_norm_epsilon(tiny_model, frozen):
    from peftstd.regularization.fgm import FGM

    model = tiny_classifier(tiny_model, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    if frozen:
        model.get_input_embeddings().weight.requires_grad_(False)
    batch = batch_of(tiny_model, ["great movie", "dull story and plot", "the film was fun"], [1, 0, 1])
    fgm = FGM(model, epsilon=0.5)
    clean = model(**batch).loss
    clean.backward()
    assert fgm.perturb()
    assert torch.allclose(fgm.delta.flatten(1).norm(dim=1), torch.full((3,), 0.5), atol=1e-5)
    adversarial = model(**batch).loss
    assert adversarial > clean  # a step along the gradient raises the loss
    fgm.clear()
    assert torch.allclose(model(**batch).loss, clean)  # and clearing removes the perturbation
    with torch.no_grad():
        model(**batch)
    assert not fgm.perturb()  # evaluation passes leave nothing to perturb with
    fgm.remove()
