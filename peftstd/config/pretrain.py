"""The schema of recipes/pretrain.py: masked-LM or causal-LM pretraining, from scratch or continued.

It shares the model, data, training and output sections with the fine-tune schema, so that a pretraining
run directory has the same contract (config.yaml, manifest.json, metrics.json, model/) and its folder can
be named as `model.name` in a fine-tune config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from peftstd.basics.section import Section
from peftstd.config.schema import SCHEMA_VERSION, DataSection, ModelSection, OutputSection, TrainingSection
from peftstd.methods import METHODS

FullSection, LoraSection = METHODS["full"].section, METHODS["lora"].section

# Small architectures for pretraining from scratch, by name (any model config.json file works too).
PRESETS: dict[str, dict] = {
    "bert-mini": {"model_type": "bert", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "bert-tiny": {"model_type": "bert", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
    "gpt2-tiny": {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 2},
}


FINE_TUNE_DATA_KEYS = {"text_pair_column", "label_column", "tokens_column", "tags_column", "prompt_column", "response_column",
                       "messages_column", "question_column", "context_column", "answers_column", "conll_separator",
                       "conll_sentence_delimiter", "test_source"}


class MaskingSection(Section):
    probability: float = Field(0.15, gt=0, lt=1, description="Masked-LM: share of tokens selected for prediction (of those: 80% [MASK], 10% random, 10% kept).")
    whole_word: bool = Field(False, description="Masked-LM: select whole words (all their word pieces together, all replaced by [MASK]) instead of single pieces.")
    next_sentence: bool = Field(
        False, description="Masked-LM: also train BERT's next-sentence-prediction head. Each sequence pairs a corpus text with the one "
        "after it, or (half the time, seeded) with a random other text; needs a model with that head (BERT).")


class PretrainEvaluation(Section):
    every_steps: int | None = Field(None, ge=1, description="Evaluate every N optimizer steps; once per epoch when omitted.")
    batch_size: int = Field(64, ge=1, description="Sequences per evaluation batch.")
    seed: int = Field(1234, description="Seed of the validation masking, so every evaluation (and the starting model's) scores the same masks.")


class PretrainConfig(Section):
    schema_version: str = Field(SCHEMA_VERSION, description="Version of the peftstd recipe schema this config follows.")
    objective: Literal["masked-lm", "causal-lm"] = Field("masked-lm", description="Masked-LM (BERT-style) or causal-LM (next token, packed blocks).")
    model: ModelSection = Field(default_factory=ModelSection, description="Model to continue pretraining; with `from_scratch`, only its tokenizer is used.")
    from_scratch: str | None = Field(
        None, description=f"Start from random weights of this architecture: a preset ({', '.join(PRESETS)}) or a config.json path; null continues from `model`.")
    data: DataSection = Field(default_factory=DataSection, description="Corpus: only the text column and the train/validation split are used; the test split is never read.")
    masking: MaskingSection = Field(default_factory=MaskingSection, description="Masked-LM settings.")
    block_size: int = Field(128, ge=8, description="Causal-LM: the corpus is tokenized, concatenated and cut into blocks of this many tokens.")
    method: Literal["full", "lora"] = Field("full", description="Train every weight, or LoRA (merged into the weights when saved); "
                                           "the fine-tuning methods of the same names.")
    full: FullSection = Field(default_factory=FullSection, description="Full-training settings (used when method is full).")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings (used when method is lora).")
    head_only: bool = Field(
        False, description="Train only the LM head (the body frozen): the baseline that shows how much of a perplexity drop is the body's, "
        "when the starting model ships without the objective's head.")
    training: TrainingSection = Field(default_factory=TrainingSection, description="Optimisation settings (learning rate: 5e-5 full, 5e-4 LoRA when omitted).")
    evaluation: PretrainEvaluation = Field(default_factory=PretrainEvaluation, description="Validation loss, perplexity and (masked-LM) accuracy.")
    output: OutputSection = Field(default_factory=OutputSection, description="Run directory settings.")

    @model_validator(mode="after")
    def _corpus_keys_only(self) -> PretrainConfig:
        """The data section is the fine-tune one; its task-specific columns mean nothing to a corpus."""
        ignored = sorted(k for k in self.data.model_fields_set & FINE_TUNE_DATA_KEYS
                         if getattr(self.data, k) != DataSection.model_fields[k].default)  # resolved configs write defaults out
        if ignored:
            raise ValueError(f"data.{ignored[0]} is a fine-tune key that pretraining never reads; a corpus uses data.source, "
                             "data.text_column, data.validation_source, data.split, data.split_seed, data.max_train_samples and data.bad_rows")
        return self

    @model_validator(mode="after")
    def _scratch_is_full(self) -> PretrainConfig:
        if self.from_scratch and (self.method != "full" or self.head_only):
            raise ValueError("from_scratch trains every weight; method must be full and head_only false")
        if self.head_only and self.method != "full":
            raise ValueError("head_only trains the head in full; set method=full")
        return self

    @model_validator(mode="after")
    def _float_weights(self) -> PretrainConfig:
        if self.model.quantization is not None:
            raise ValueError("model.quantization is for fine-tuning adapters on a frozen base; pretraining trains float weights")
        if getattr(self.method_section(), "init", None) == "loftq":
            raise ValueError(f"{self.method}.init loftq corrects a 4-bit base's quantization error; pretraining trains float weights")
        return self

    def method_section(self) -> Section:
        return getattr(self, self.method)

    def learning_rate(self) -> float:
        return self.training.learning_rate or METHODS[self.method].recommended_learning_rate
