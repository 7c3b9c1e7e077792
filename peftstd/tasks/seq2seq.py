"""Sequence-to-sequence fine-tuning (encoder-decoder models such as T5 and BART): the source goes through the
encoder, the target is learned with teacher forcing (the model shifts the labels right into its decoder
inputs). Data: the prompt/response columns hold source/target. Metrics: see `GenerativeTask`."""

from __future__ import annotations

from peftstd.data.examples import PromptExample
from peftstd.errors import ConfigError
from peftstd.tasks.base import IGNORE, EncodedSplit
from peftstd.tasks.generative import GenerativeTask


def source_text(row: PromptExample) -> str:
    """The encoder's input: earlier chat turns (if any) on their own lines, then the prompt."""
    return "".join(f"{text}\n" for _, text in row.history) + row.prompt


class Seq2SeqLM(GenerativeTask):
    name = "seq2seq"
    peft_task_type = "SEQ_2_SEQ_LM"
    auto_model, ort_model, hub_task = "AutoModelForSeq2SeqLM", "ORTModelForSeq2SeqLM", "text2text-generation"
    head_candidates = ()  # the LM head is tied to the shared embeddings (T5, BART); the methods adapt the blocks

    def check_model(self, model_config) -> None:
        if not model_config.is_encoder_decoder:
            raise ConfigError(f"task seq2seq needs an encoder-decoder model (T5, BART, ...), not a {model_config.model_type} "
                              "model; use task.type=causal-lm for decoder-only models")

    def prompt_ids(self, tokenizer, row: PromptExample) -> list[int]:
        return tokenizer(source_text(row), add_special_tokens=True)["input_ids"]

    def encode(self, tokenizer, rows: list[PromptExample], labels: list[str], max_length: int, **_) -> EncodedSplit:
        """Source and target each cut at `max_length` tokens; an example counts as truncated when either was."""
        sources = tokenizer([source_text(row) for row in rows], truncation=False, verbose=False)["input_ids"]
        targets = tokenizer(text_target=[row.response for row in rows], truncation=False, verbose=False)["input_ids"]
        features, truncated = [], 0
        for source, target in zip(sources, targets):
            truncated += len(source) > max_length or len(target) > max_length
            source, target = source[:max_length], target[:max_length]
            features.append({"input_ids": source, "attention_mask": [1] * len(source), "labels": target})
        return EncodedSplit(features, [max(len(f["input_ids"]), len(f["labels"])) for f in features], truncated=truncated)

    def collator(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)
