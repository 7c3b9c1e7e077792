"""Causal-LM supervised fine-tuning: prompt/response or chat data through the model's chat template, loss on
the response tokens only, optional packing. Metrics: see `GenerativeTask`."""

from __future__ import annotations

import torch

from peftstd.data.examples import PromptExample
from peftstd.errors import ConfigError
from peftstd.tasks.base import IGNORE, EncodedSplit
from peftstd.tasks.generative import GenerativeTask


def ensure_pad_token(tokenizer) -> None:
    """Decoder-only tokenizers often have no pad token; padding positions are masked anyway."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def chat_prompt_ids(tokenizer, row: PromptExample) -> list[int]:
    """The prompt as the model sees it before answering: its chat template with the generation prompt, or
    plain text and a newline when the tokenizer has no template."""
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template(row.messages(), add_generation_prompt=True, tokenize=True))
    history = "".join(f"{text}\n" for _, text in row.history)
    return tokenizer(history + row.prompt + "\n", add_special_tokens=True)["input_ids"]


def example_ids(tokenizer, row: PromptExample) -> tuple[list[int], int]:
    """(token ids of prompt + response, number of prompt tokens). With a chat template, the whole
    conversation goes through it (so the response ends with the template's end-of-turn token)."""
    prompt = chat_prompt_ids(tokenizer, row)
    if tokenizer.chat_template:
        full = list(tokenizer.apply_chat_template(row.messages() + [{"role": "assistant", "content": row.response}], tokenize=True))
        if full[: len(prompt)] == prompt:
            return full, len(prompt)
    response = tokenizer(row.response, add_special_tokens=False)["input_ids"]
    return prompt + response + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []), len(prompt)


def pack(features: list[dict], max_length: int) -> list[dict]:
    """Consecutive examples concatenated into sequences of at most `max_length` tokens."""
    packed, current = [], {"input_ids": [], "attention_mask": [], "labels": []}
    for feature in features:
        if current["input_ids"] and len(current["input_ids"]) + len(feature["input_ids"]) > max_length:
            packed.append(current)
            current = {"input_ids": [], "attention_mask": [], "labels": []}
        for key in current:
            current[key] = current[key] + feature[key]
    if current["input_ids"]:
        packed.append(current)
    return packed


class CausalLM(GenerativeTask):
    name = "causal-lm"
    peft_task_type = "CAUSAL_LM"
    head_candidates = ()  # the LM head is tied to the input embeddings; LoRA adapts the blocks
    auto_model, ort_model, hub_task = "AutoModelForCausalLM", "ORTModelForCausalLM", "text-generation"
    label_shift = 1  # the model predicts token t+1 at position t
    padding_side = "left"  # generation continues each prompt from its last token

    def prompt_ids(self, tokenizer, row: PromptExample) -> list[int]:
        ensure_pad_token(tokenizer)
        return chat_prompt_ids(tokenizer, row)

    def check_model(self, model_config) -> None:
        if model_config.is_encoder_decoder:
            raise ConfigError(f"task causal-lm needs a decoder-only model, not an encoder-decoder {model_config.model_type} model; "
                              "use task.type=seq2seq")

    def encode(self, tokenizer, rows: list[PromptExample], labels: list[str], max_length: int, packing: bool = False, **_) -> EncodedSplit:
        """Prompt tokens are labelled IGNORE: the loss covers the response (and its end-of-turn token) only."""
        ensure_pad_token(tokenizer)
        features, truncated = [], 0
        for row in rows:
            ids, prompt_length = example_ids(tokenizer, row)
            truncated += len(ids) > max_length
            ids = ids[:max_length]
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                             "labels": [IGNORE] * min(prompt_length, len(ids)) + ids[prompt_length:]})
        if packing:
            features = pack(features, max_length)
        return EncodedSplit(features, [len(f["input_ids"]) for f in features], truncated=truncated)

    def loss(self, model, batch, label_smoothing: float = 0.0):
        """The model's own (shifted) cross-entropy, or a label-smoothed one over the same shifted positions."""
        if not label_smoothing:
            return model(**batch).loss
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                                 label_smoothing=label_smoothing)

    def collator(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        ensure_pad_token(tokenizer)
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)
