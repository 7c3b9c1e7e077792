"""The model a pretraining run trains: continued from a pretrained folder, or random weights of a preset or
config file; LoRA-wrapped when asked (and merged back before saving, so the result is a plain folder)."""

from __future__ import annotations

from pathlib import Path

from peftstd.errors import ConfigError
from peftstd.methods import Wrapping, get_method

HEAD_NAMES = ("cls", "lm_head", "vocab_projector", "vocab_transform", "vocab_layer_norm")


def build_model(cfg, base_path: Path, tokenizer, total_steps: int):
    """(model, a phrase saying where it started) for the configured objective, prepared by the configured method
    (the same registered methods fine-tuning uses)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForPreTraining

    from peftstd.config.pretrain import PRESETS

    next_sentence = cfg.objective == "masked-lm" and cfg.masking.next_sentence
    auto = AutoModelForPreTraining if next_sentence else AutoModelForMaskedLM if cfg.objective == "masked-lm" else AutoModelForCausalLM
    if cfg.from_scratch:
        if cfg.from_scratch in PRESETS:
            settings = dict(PRESETS[cfg.from_scratch])
            config = AutoConfig.for_model(settings.pop("model_type"), **settings, vocab_size=len(tokenizer))
        elif Path(cfg.from_scratch).is_file():
            config = AutoConfig.from_pretrained(cfg.from_scratch)
        else:
            raise ConfigError(f"from_scratch {cfg.from_scratch!r} is neither a preset ({', '.join(PRESETS)}) nor a config.json file")
        if cfg.objective == "masked-lm" and tokenizer.mask_token is None:
            raise ConfigError("masked-LM needs a tokenizer with a mask token; use objective=causal-lm for this tokenizer")
        return check_next_sentence_head(auto.from_config(config), next_sentence), f"random weights ({cfg.from_scratch})"
    try:
        model = check_next_sentence_head(auto.from_pretrained(base_path), next_sentence)
    except ValueError as error:  # e.g. a decoder-only model asked for masked-LM
        raise ConfigError(f"{cfg.model.name} cannot be trained as {cfg.objective}: {str(error).splitlines()[0]}") from None
    started = f"{cfg.model.name}"
    heads = [name for name in HEAD_NAMES if hasattr(model, name)]
    model = get_method(cfg.method).apply(model, cfg.method_section(), Wrapping(None, heads, total_steps))
    if cfg.head_only:  # method full (the schema checks): every weight trains unless frozen here
        if not heads:
            raise ConfigError(f"head_only: {type(model).__name__} has no separate LM head ({', '.join(HEAD_NAMES)})")
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.split(".")[0] in heads  # a head tied to the input embeddings stays frozen with them
        started += " (body frozen, head only)"
    return model, started


def check_next_sentence_head(model, next_sentence: bool):
    """The model, when it can learn next-sentence prediction (or is not asked to)."""
    import inspect

    if next_sentence and "next_sentence_label" not in inspect.signature(model.forward).parameters:
        raise ConfigError(f"masking.next_sentence needs a model with a next-sentence-prediction head (BERT); "
                          f"{type(model).__name__} has none: set masking.next_sentence=false")
    return model


def merge_for_saving(model, cfg):
    """A plain transformers model: LoRA folded into the weights."""
    if cfg.method == "lora":
        return model.merge_and_unload()
    return model
