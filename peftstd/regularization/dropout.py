"""The `regularization.dropout` override, applied to the model config before the weights load."""

from __future__ import annotations


def dropout_overrides(model_config, dropout: float | None) -> dict[str, float]:
    """Every dropout probability the config defines (e.g. BERT's hidden_dropout_prob,
    attention_probs_dropout_prob, classifier_dropout), set to `dropout`; {} when not overridden."""
    if dropout is None:
        return {}
    return {name: dropout for name, value in model_config.to_dict().items()
            if ("dropout" in name or name.endswith("pdrop")) and (value is None or isinstance(value, float))}
