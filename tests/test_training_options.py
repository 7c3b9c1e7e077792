"""Recipe options beyond the defaults: multi-class labels, Houlsby adapters, early stopping."""

from __future__ import annotations

import json

from conftest import run_recipe, synthetic_rows, tiny_overrides, write_jsonl


def test_multi_class_labels_train_and_report_per_class(tiny_model, tmp_path):
    rows = synthetic_rows(180)
    for i, row in enumerate(rows):
        if i % 3 == 2:
            row["label"] = "neutral"
    data = write_jsonl(tmp_path / "three.jsonl", rows)
    result = run_recipe(tiny_overrides(tiny_model, data, tmp_path, "three", "training.max_steps=4"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "three" / "labels.json").read_text()) == ["negative", "neutral", "positive"]
    assert "| **neutral** |" in (tmp_path / "three" / "report.md").read_text()


def test_houlsby_adapters_sit_after_attention_and_ffn(tiny_model, sentiment_file, tmp_path):
    trainable = {}
    for placement in ("pfeiffer", "houlsby"):
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, placement, "method=adapter",
                                           f"adapter.placement={placement}", "training.max_steps=2"))
        assert result.returncode == 0, result.stderr[-2000:]
        trainable[placement] = json.loads((tmp_path / placement / "manifest.json").read_text())["parameters"]["trainable"]
    head = 32 * 2 + 2  # the classifier, trained by both
    assert trainable["houlsby"] - head == 2 * (trainable["pfeiffer"] - head)  # twice the bottlenecks


def test_early_stopping_ends_the_run_and_keeps_the_best_checkpoint(tiny_model, sentiment_file, tmp_path):
    result = run_recipe(tiny_overrides(tiny_model, sentiment_file, tmp_path, "early", "training.max_steps=200",
                                       "evaluation.every_steps=1", "evaluation.metric=loss", "evaluation.early_stopping_patience=2",
                                       "training.learning_rate=0.5"))
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "early" / "manifest.json").read_text())
    metrics = json.loads((tmp_path / "early" / "metrics.json").read_text())
    assert manifest["training"]["stopped_early"] and manifest["training"]["optimizer_steps"] < 200
    losses = {r["step"]: r["loss"] for r in metrics["history"]["validation"]}
    assert metrics["best"]["value"] == min(losses.values()) and losses[metrics["best"]["step"]] == metrics["best"]["value"]
    assert len(losses) == metrics["best"]["step"] + 2  # stopped after two evaluations without improvement


def test_flop_count_of_a_tiny_model_matches_a_hand_count(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from peftstd.training.flops import count_flops, training_flops_per_token

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    batch_size, length, hidden, inner, layers = 2, 8, 32, 64, 2
    batch = {"input_ids": torch.randint(5, 20, (batch_size, length)), "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
             "labels": torch.tensor([0, 1])}
    tokens = batch_size * length
    linear = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inner)  # Q, K, V, output; FFN in and out
    attention = 2 * 2 * batch_size * length * length * hidden  # Q K^T and attention x V, over every head
    head = 2 * batch_size * hidden * hidden + 2 * batch_size * hidden * 2  # pooler on [CLS], classifier
    assert count_flops(lambda: model(**batch)) == layers * (linear + attention) + head

    def loss_of(m, b):
        return m(**b).loss

    forward = (layers * (linear + attention) + head) / tokens
    full = training_flops_per_token(model, batch, loss_of)
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients behind
    lora = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    low_rank = training_flops_per_token(lora, batch, loss_of)
    # full fine-tuning: weight and activation gradients (about 3x the forward); LoRA: the frozen base still passes
    # gradients back through its activations (about 2x), but computes none for its weights
    assert 2.9 * forward < full < 3.3 * forward and 1.9 * forward < low_rank < 2.4 * forward


def test_packed_dropout_keeps_torch_dropouts_semantics(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from peftstd.training.dropout import PackedDropout, keep_mask, use_packed_dropout

    torch.manual_seed(0)
    for p in (0.05, 0.1, 0.5):
        assert abs(keep_mask(torch.Size([400_000]), p).float().mean().item() - (1 - p)) < 0.003
    dropout = PackedDropout(0.25)
    x = torch.randn(64, 50, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75) and 0.65 < kept.float().mean() < 0.85
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)  # gradient flows through kept elements only, scaled alike
    torch.manual_seed(1)
    assert torch.equal(dropout(x), y)  # the seeded torch generator decides the mask: runs repeat and resume exactly
    assert torch.equal(dropout.eval()(x), x)

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_dropout=0.1, target_modules=["query", "value"]))
    plain = sum(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())
    assert use_packed_dropout(model) == plain > 4  # the model's own dropouts and LoRA's (2 layers x query, value)
    assert not any(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())
    assert isinstance(model.base_model.model.bert.encoder.layer[0].attention.self.query.lora_dropout["default"], PackedDropout)
