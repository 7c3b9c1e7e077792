"""The last encoder layer on the pooled token alone (`training.pooled_token_last_layer`): the same logits and
gradients as the whole layer, fewer FLOPs by a hand count, and nothing changed outside training mode."""

from __future__ import annotations

import pytest
import torch

from peftstd.training.pooled_token import use_pooled_token_last_layer, why_not_applicable

HIDDEN, INNER, LAYERS, HEADS = 32, 64, 2, 2


def tiny_classifier(kind: str, attention: str = "sdpa"):
    from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig, XLMRobertaConfig

    config_class = {"bert": BertConfig, "roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig}[kind]
    config = config_class(vocab_size=40, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                          intermediate_size=INNER, max_position_embeddings=40, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, num_labels=3, pad_token_id=1)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)


def padded_batch(batch_size: int = 3, length: int = 9) -> dict:
    torch.manual_seed(1)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    mask[1, 5:] = 0  # padded rows: the key mask must still reach the first token's attention
    mask[2, 3:] = 0
    return {"input_ids": torch.randint(3, 40, (batch_size, length)), "attention_mask": mask, "labels": torch.tensor([0, 2, 1])}


def logits_and_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,attention", [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa"), ("xlm-roberta", "sdpa")])
@pytest.mark.parametrize("lora", [False, True])
def test_same_logits_and_gradients_as_the_whole_last_layer(kind, attention, lora):
    from peft import LoraConfig, get_peft_model

    model = tiny_classifier(kind, attention)
    if lora:
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    batch = padded_batch()
    logits, gradients = logits_and_gradients(model, batch)
    assert use_pooled_token_last_layer(model) == {"applied": True, "layer": LAYERS - 1}
    pooled_logits, pooled_gradients = logits_and_gradients(model, batch)
    assert torch.allclose(pooled_logits, logits, atol=1e-5)
    assert gradients.keys() == pooled_gradients.keys() and len(gradients) > 0  # every trained weight still gets a gradient
    for name, gradient in gradients.items():
        assert torch.allclose(pooled_gradients[name], gradient, rtol=1e-4, atol=1e-6), name

    model.eval()  # outside training the layer runs whole: a last hidden state for every token
    inner = model.get_base_model() if lora else model
    encoder = inner.bert if kind == "bert" else inner.roberta
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert hidden.shape == (3, 9, HIDDEN)


def test_flop_count_drops_by_the_hand_count_of_the_skipped_rows():
    from peftstd.training.flops import count_flops

    model = tiny_classifier("bert").train()
    batch_size, length = 2, 8
    batch = {"input_ids": torch.randint(3, 40, (batch_size, length)), "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
             "labels": torch.tensor([0, 1])}
    tokens = batch_size * length
    whole = count_flops(lambda: model(**batch))
    use_pooled_token_last_layer(model)
    pooled = count_flops(lambda: model(**batch))
    # the last layer keeps keys and values for every token; query, attention output, FFN and the attention itself
    # run for one query per example instead of `length`
    skipped_rows = tokens - batch_size
    skipped = 2 * skipped_rows * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * INNER) + 2 * 2 * skipped_rows * length * HIDDEN
    assert whole - pooled == skipped


def test_not_applied_where_the_head_reads_every_token(tiny_model):
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(tiny_model, num_labels=3)
    forward = model.bert.encoder.layer[-1].forward
    done = use_pooled_token_last_layer(model)
    assert not done["applied"] and "BertForTokenClassification" in done["reason"]
    assert model.bert.encoder.layer[-1].forward == forward
    relative = tiny_classifier("bert")
    relative.config.position_embedding_type = "relative_key"
    assert "relative_key" in why_not_applicable(relative)
