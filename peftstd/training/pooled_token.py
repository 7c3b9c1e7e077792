"""The last encoder layer computes only the token the classification head reads (`training.pooled_token_last_layer`).

BERT-family sequence classifiers pool the first token ([CLS], `<s>`) of the last layer and nothing else, so in that
layer every other token's query, attention output, feed-forward and dropouts are computed and thrown away. Here the
last layer runs its query and everything after it on the first token alone, with keys and values still over every
token: the same function (logits and gradients equal to float rounding; tests/test_pooled_token.py) without 10/12 of
the last layer's per-token matmuls (14% of MiniLM's FLOPs per token). Only in training mode: evaluation, prediction
and export run the model unchanged. transformers and peft have no such switch, hence by hand; the layer's own
submodules (and the LoRA or adapter modules inside them) run as they are, only the call order is ours.
"""

from __future__ import annotations

import types

import torch

# Sequence classifiers whose head reads only the first token of the last hidden state, and the attribute of their
# encoder model; their layers share BERT's structure (attention.self, attention.output, feed_forward_chunk).
FIRST_TOKEN_CLASSIFIERS = {
    "BertForSequenceClassification": "bert",
    "RobertaForSequenceClassification": "roberta",
    "XLMRobertaForSequenceClassification": "roberta",
}


def _underlying(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under peft's wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def why_not_applicable(model: torch.nn.Module) -> str | None:
    """None when the last layer can run on the pooled token alone, else the reason, for the manifest."""
    inner = _underlying(model)
    kind = type(inner).__name__
    if kind not in FIRST_TOKEN_CLASSIFIERS:
        return f"{kind} is not a sequence classifier known to read only the first token ({', '.join(FIRST_TOKEN_CLASSIFIERS)})"
    config = inner.config
    if config.is_decoder or getattr(config, "add_cross_attention", False):
        return "the encoder is configured as a decoder"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {config.position_embedding_type!r} (only 'absolute' is supported)"
    return None


def use_pooled_token_last_layer(model: torch.nn.Module) -> dict:
    """Make the last encoder layer compute only the first token while training; what was done, for the manifest."""
    reason = why_not_applicable(model)
    if reason:
        return {"applied": False, "reason": reason}
    inner = _underlying(model)
    layers = getattr(inner, FIRST_TOKEN_CLASSIFIERS[type(inner).__name__]).encoder.layer
    layer = layers[-1]
    full_forward = layer.forward

    def forward(self, hidden_states, attention_mask=None, head_mask=None, *args, output_attentions=False, **kwargs):
        if not self.training or head_mask is not None or output_attentions:
            return full_forward(hidden_states, attention_mask, head_mask, *args, output_attentions=output_attentions, **kwargs)
        first = hidden_states[:, :1]
        # the mask's query axis (SDPA's [batch, 1, queries, keys]; eager's is already 1) keeps the first row
        mask = attention_mask[:, :, :1] if attention_mask is not None else None
        # keys and values from every token (the attention's cross-attention path), the query from the first alone
        attended = self.attention.self(first, attention_mask=mask, encoder_hidden_states=hidden_states)[0]
        return (self.feed_forward_chunk(self.attention.output(attended, first)),)

    layer.forward = types.MethodType(forward, layer)  # on the instance: the state dict and the class stay as they are
    return {"applied": True, "layer": len(layers) - 1}
