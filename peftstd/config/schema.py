"""The recipe standard: one typed, versioned schema for every peftstd run.

Every field carries a type, a default and a one-line description; the JSON
Schema (`peftstd schema`) and the defaults table (`docs/defaults.md`) are
generated from it. Unknown keys are rejected (`extra="forbid"`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, create_model, field_validator, model_validator

from peftstd.basics.section import Section
from peftstd.methods import METHODS
from peftstd.methods.base import quantization_problem
from peftstd.models.quantization import QuantizationSection
from peftstd.regularization import RegularizationSection
from peftstd.tasks import PRIMARY_METRIC, TASK_METRICS

SCHEMA_VERSION = "1.0"
MethodName = Literal[tuple(METHODS)]  # the registered methods (peftstd/methods/)
TaskName = Literal["text-classification", "token-classification", "causal-lm", "seq2seq", "question-answering"]


class ModelSection(Section):
    name: str = Field("minilm", description="Registry name (e.g. 'minilm'), hub id, or local folder of a pretrained model.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `name` is a hub id.")
    max_length: int = Field(128, ge=8, le=8192, description="Inputs are truncated to this many tokens (truncation is recorded in the manifest).")
    quantization: QuantizationSection | None = Field(
        None, description="Load the frozen base in 4 bits (QLoRA) or 8 bits through bitsandbytes, e.g. {bits: 4, type: nf4, double_quant: true, "
        "compute_dtype: bf16}; null: float weights. Methods lora and adalora.")


class SplitFractions(Section):
    train: float = Field(0.8, gt=0, lt=1, description="Fraction of a single source used for training.")
    validation: float = Field(0.1, ge=0, lt=1, description="Fraction used for validation (model selection, early stopping); "
                              "0 when data.validation_source holds the validation split.")
    test: float = Field(0.1, ge=0, lt=1, description="Fraction held out for the final test metrics; 0 when data.test_source holds the test split.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitFractions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1.0, got {total:g}")
        return self


class DataSection(Section):
    source: str = Field("vader-movies", description="Registry name (e.g. 'vader-movies'), hub dataset id, or a local .jsonl/.csv/.parquet file.")
    validation_source: str | None = Field(None, description="Optional separate validation file; otherwise split from `source`.")
    test_source: str | None = Field(None, description="Optional separate test file; otherwise split from `source`.")
    text_column: str = Field("text", description="Column holding the input text.")
    text_pair_column: str | None = Field(None, description="Optional second text column (sentence-pair tasks).")
    label_column: str = Field("label", description="Column holding the label (string or integer).")
    tokens_column: str = Field("tokens", description="Token classification: column holding the list of words (jsonl, hub).")
    tags_column: str = Field("tags", description="Token classification: column holding the list of tags, one per word (names or ClassLabel ids).")
    prompt_column: str = Field("prompt", description="Causal-LM fine-tuning: column holding the prompt (seq2seq: the source text).")
    response_column: str = Field("response", description="Causal-LM fine-tuning: column holding the response to learn (seq2seq: the target text).")
    messages_column: str = Field("messages", description="Causal-LM fine-tuning: chat-format column ({role, content} turns; the last, the assistant's, is learned).")
    question_column: str = Field("question", description="Question answering: column holding the question.")
    context_column: str = Field("context", description="Question answering: column holding the passage that contains the answer.")
    answers_column: str = Field("answers", description="Question answering: SQuAD-style column {text: [...], answer_start: [...]} "
                                "(character offsets into the context; several gold answers allowed).")
    conll_separator: str | None = Field(None, description="CoNLL files: field separator (token first, tag last); null splits on whitespace.")
    conll_sentence_delimiter: str | None = Field(
        None, description="CoNLL files: the line that ends a sentence; null means any line that is blank once stripped.")
    split: SplitFractions = Field(default_factory=SplitFractions, description="Deterministic split of a single source.")
    split_seed: int = Field(1234, description="Seed of the deterministic split (independent of the training seed).")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N training examples (quick runs).")
    bad_rows: Literal["error", "skip"] = Field("error", description="Rows with missing text or label: stop with file/line numbers, or skip and count them.")

    @model_validator(mode="after")
    def _empty_split_has_a_file(self) -> DataSection:
        for name in ("validation", "test"):
            if getattr(self.split, name) == 0 and not getattr(self, f"{name}_source"):
                raise ValueError(f"data.split.{name} is 0 but data.{name}_source is not set; a {name} split must come from somewhere")
        return self


class TaskSection(Section):
    type: TaskName = Field("text-classification", description="What the model learns; decides head, loss, preprocessing and metrics.")
    labels: list[str] | None = Field(None, description="Label names in index order; inferred (sorted) from the training split when omitted.")
    packing: bool = Field(False, description="Causal-LM: pack several training examples into each model.max_length sequence (less padding; "
                          "attention then crosses example boundaries, as in TRL's packing).")
    label_all_subwords: bool = Field(
        False, description="Token classification: train on every word piece (B- becomes I- after the first) instead of the first piece only; "
        "evaluation always scores the first piece of each word.")
    doc_stride: int = Field(64, ge=1, description="Question answering: tokens shared by consecutive windows of a context longer than "
                            "model.max_length (each window is one feature; answers are chosen across all windows).")
    max_answer_tokens: int = Field(30, ge=1, description="Question answering: longest answer span considered, in tokens.")


class GenerationSection(Section):
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Causal-LM and seq2seq: tokens generated per held-out prompt for BLEU/ROUGE.")
    num_beams: int = Field(1, ge=1, le=16, description="Beam search width (1: greedy, unless do_sample).")
    do_sample: bool = Field(False, description="Sample instead of greedy/beam decoding (seeded with training.seed).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with do_sample).")
    samples: int | None = Field(200, ge=1, description="Held-out test prompts generated for BLEU/ROUGE (the first N); null: all.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch (left-padded).")


class TrainingSection(Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training split (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps; overrides `epochs`.")
    batch_size: int = Field(32, ge=1, description="Examples per device per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimizer step.")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate; the method's recommended value when omitted.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay (not applied to biases and LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps with linear warm-up.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Learning-rate schedule after warm-up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables clipping.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="'auto' picks bf16 autocast where the CPU/GPU supports it, else fp32; the choice is recorded.")
    group_by_length: bool = Field(True, description="Batch examples of similar length together to cut padding.")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw", description="torch's AdamW, or bitsandbytes' 8-bit AdamW (optimizer state in 8 bits; paged: state pages to CPU memory under GPU memory pressure).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass instead of keeping them (less memory, about a third more compute).")
    cpu_threads: int | None = Field(None, ge=1, description="Intra-op CPU threads per process; null: the machine's physical cores "
                                    "shared among its processes, whatever the launcher set (OMP_NUM_THREADS). A rerun must use "
                                    "the same count to repeat a CPU run bit for bit; the manifest records it.")
    cpu_dropout: Literal["packed", "torch"] = Field(
        "packed", description="How dropout masks are drawn on CPU: 'packed' takes four 16-bit uniforms from each 64-bit draw of numpy's "
        "SFC64 generator seeded from torch's (p rounded to 1/65536; torch's masks took 39% of a LoRA step here, "
        "bench/results/train_profile_torch_dropout.md), 'torch' uses torch's own dropout (one draw per element). GPU runs always use torch's.")
    pooled_token_last_layer: bool = Field(
        True, description="Sequence classification on BERT, RoBERTa or XLM-R, whose head reads only the first token: while "
        "training, the last layer computes its query, feed-forward and dropouts for that token alone (keys and values still "
        "cover every token). The same function with less work (MiniLM + LoRA: 1.13x the samples/s here, "
        "bench/results/train_throughput.md); evaluation and export run the unchanged model. Ignored where it does not apply; the manifest records whether it was used.")
    seed: int = Field(42, description="Seed of every RNG (python, numpy, torch, data order).")
    log_every_steps: int = Field(10, ge=1, description="Log loss and learning rate every N optimizer steps.")


class EvaluationSection(Section):
    metric: str | None = Field(
        None, description="Validation metric for best-checkpoint selection and early stopping (e.g. accuracy, macro_f1, f1, loss); "
        "null: the task's primary metric (accuracy for text classification, entity micro-F1 `f1` for token classification, "
        "validation `loss` for causal-LM and seq2seq, SQuAD `f1` for question answering).")
    every_steps: int | None = Field(None, ge=1, description="Evaluate every N optimizer steps; once per epoch when omitted.")
    batch_size: int = Field(64, ge=1, description="Examples per evaluation batch.")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after N evaluations without improvement; null disables.")


class OutputSection(Section):
    dir: str = Field("runs", description="Folder that holds run directories.")
    name: str | None = Field(None, description="Run directory name; '<config stem>-<timestamp>' when omitted.")
    overwrite: bool = Field(False, description="Replace an existing run directory of the same name.")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="Save a resumable training state every N optimizer steps; at every evaluation when omitted.")
    checkpoint_every_minutes: float | None = Field(None, gt=0, description="Also save one when this many minutes passed since the last.")
    keep_last_checkpoints: int = Field(2, ge=1, description="Resumable training states kept on disk (older ones are deleted).")
    tensorboard: bool = Field(True, description="Write TensorBoard event files under `tensorboard/`.")


class _Inputs(Section):
    schema_version: str = Field(SCHEMA_VERSION, description="Version of the peftstd recipe schema this config follows.")
    model: ModelSection = Field(default_factory=ModelSection, description="Pretrained model to start from.")
    data: DataSection = Field(default_factory=DataSection, description="Where the examples come from and how they are split.")
    task: TaskSection = Field(default_factory=TaskSection, description="Task, head and labels.")


# `method:` and one section per registered method, in the schema right after the inputs
_WithMethods = create_model(
    "_WithMethods", __base__=_Inputs,
    method=(MethodName, Field("lora", description="Fine-tuning method: " + "; ".join(f"{n}: {c.summary}" for n, c in METHODS.items()) + ".")),
    **{name: (cls.section, Field(default_factory=cls.section, description=f"Settings of method {name} (used when method is {name}).")) for name, cls in METHODS.items()},
)


class RecipeConfig(_WithMethods):
    """A complete fine-tuning recipe."""

    training: TrainingSection = Field(default_factory=TrainingSection, description="Optimisation settings.")
    generation: GenerationSection = Field(default_factory=GenerationSection, description="Decoding settings of generation metrics (causal-LM, seq2seq).")
    regularization: RegularizationSection = Field(
        default_factory=RegularizationSection, description="Dropout, label smoothing, adversarial training, augmentation.")
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection, description="Evaluation, model selection, early stopping.")
    output: OutputSection = Field(default_factory=OutputSection, description="Run directory settings.")

    @field_validator("schema_version", mode="before")
    @classmethod
    def _version_as_text(cls, value):
        return str(value) if isinstance(value, (int, float)) else value  # `schema_version: 1.0` in YAML is a float

    @model_validator(mode="after")
    def _known_schema_version(self) -> RecipeConfig:
        if self.schema_version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"schema_version {self.schema_version!r} is not supported; this peftstd reads {SCHEMA_VERSION}")
        return self

    @model_validator(mode="after")
    def _metric_fits_task(self) -> RecipeConfig:
        allowed = TASK_METRICS[self.task.type]
        if self.evaluation.metric is None:
            self.evaluation.metric = PRIMARY_METRIC[self.task.type]
        if self.evaluation.metric not in allowed:
            raise ValueError(
                f"evaluation.metric {self.evaluation.metric!r} is not a {self.task.type} metric; allowed: {', '.join(allowed)}"
            )
        return self

    @model_validator(mode="after")
    def _augmentation_fits_task(self) -> RecipeConfig:
        if self.regularization.augmentation.copies and self.task.type != "text-classification":
            raise ValueError("regularization.augmentation applies to text-classification only (word edits would misalign tags)")
        return self

    @model_validator(mode="after")
    def _quantization_fits_method(self) -> RecipeConfig:
        if self.model.quantization is not None and (problem := quantization_problem(self.method)):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _loftq_needs_a_4bit_base(self) -> RecipeConfig:
        quantization = self.model.quantization
        if getattr(self.method_section(), "init", None) == "loftq" and (quantization is None or quantization.bits != 4):
            raise ValueError(f"{self.method}.init loftq corrects a 4-bit base's quantization error; it needs model.quantization.bits 4")
        return self

    def method_section(self) -> Section:
        """The settings section of the chosen method."""
        return getattr(self, self.method)

    def learning_rate(self) -> float:
        """The configured learning rate, or the chosen method's recommended one."""
        return self.training.learning_rate or METHODS[self.method].recommended_learning_rate
