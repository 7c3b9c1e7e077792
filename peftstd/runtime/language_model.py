"""Causal LMs ready to generate token by token: an export's gated ONNX decoder, or the LoRA runs of one base model
in PyTorch sharing that base, each with the tokenizer, chat template, end-of-turn tokens and context window it
was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftstd.errors import UserError
from peftstd.runtime.decoders import Decoder, OnnxDecoder, TorchDecoder, end_ids
from peftstd.runtime.folders import ExportFolder, RunFolder
from peftstd.runtime.load import adapter_of


@dataclass
class LanguageModel:
    """One decoder and what generating with it needs; several served names may share it (one per adapter)."""

    decoder: Decoder
    tokenizer: object
    end_ids: frozenset[int]
    window: int  # positions the model takes: prompt and generated tokens together
    info: dict  # what /v1/models shows

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation through the model's chat template with the generation prompt, as in training; plain
        text lines without a template."""
        if self.tokenizer.chat_template:
            return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        text = "".join(f"{m['content']}\n" for m in messages)
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]


def window_of(folder: Path) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    return int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 2048)


def export_language_model(export: ExportFolder, artifact: str = "auto", threads: int | None = None, spinning: bool = True) -> LanguageModel:
    """The gated decoder of a causal-LM export (its KV-cache ONNX file), fp32 or weight-only int8."""
    from transformers import AutoTokenizer

    from peftstd.runtime.choice import choose_artifact

    record, _ = choose_artifact(export, artifact, "onnxruntime")
    folder = export.artifact_path(record.artifact)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    decoder = OnnxDecoder(folder, threads, spinning)
    info = {"task": export.task, "artifact": record.artifact, "runtime": "onnxruntime", "device": decoder.description,
            "gate": {"status": export.record.status, "metric": export.record.gate.metric, "value": record.value,
                     "trained": export.record.gate.trained_metric, "drop_points": record.drop_points, "passed": record.passed},
            "exported": export.created, "export_sha256": export.record.files.get(record.file)}
    return LanguageModel(decoder, tokenizer, end_ids(tokenizer, folder), window_of(folder), info)


def runs_language_model(runs: dict[str, RunFolder], threads: int | None = None) -> LanguageModel:
    """One PyTorch base with every run's LoRA adapter loaded under its served name."""
    from transformers import AutoTokenizer

    adapters = {name: adapter_of(run, "causal-lm") for name, run in runs.items()}
    bases = {run.manifest.base_model.path for run in runs.values()}
    if len(bases) > 1:
        raise UserError(f"adapter runs served together must share one base model; these have {', '.join(sorted(bases))}")
    [base] = bases
    decoder = TorchDecoder(Path(base), adapters, threads)
    tokenizer = AutoTokenizer.from_pretrained(next(iter(adapters.values())))
    info = {"task": "causal-lm", "artifact": "adapter", "runtime": "pytorch", "device": decoder.description, "base_model": base}
    return LanguageModel(decoder, tokenizer, end_ids(tokenizer, Path(base)), window_of(Path(base)), info)
