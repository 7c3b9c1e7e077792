"""Export settings: a YAML profile (see the top-level `export/` folder) with command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from peftstd.basics.section import Section
from peftstd.config.load import describe
from peftstd.errors import ConfigError

GgufType = Literal["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0"]


class ExportProfile(Section):
    target: Literal["cpu", "gpu"] = Field("cpu", description="Where the artifact will run; decides the quantization scheme.")
    format: Literal["onnx", "tensorrt", "gguf"] = Field(
        "onnx", description="Artifact format; tensorrt needs the tensorrt package and an NVIDIA GPU; gguf (causal-LM runs) writes "
        "llama.cpp / Ollama files of the types in gguf_types and needs the gguf extra (llama-cpp-python).")
    int8: bool = Field(False, description="Also produce int8 artifacts (CPU: the schemes in cpu_int8; GPU: static QDQ for TensorRT).")
    cpu_int8: list[Literal["dynamic", "static", "nncf"]] = Field(
        ["dynamic", "nncf"], min_length=1, description="CPU int8 schemes to produce (and gate): dynamic and static (calibrated) "
        "ONNX Runtime int8, nncf (OpenVINO IR by NNCF's post-training int8, runs on openvino). Static is left out by default: "
        "slower than the other two on both CPU classes measured (bench/results/int8_variants.md) and 60 s of a MiniLM export; "
        "add it for a batch-independent int8 ONNX file (Triton's onnxruntime backend).")
    fp16: bool = Field(False, description="Also produce an fp16 ONNX artifact (GPU targets).")
    prune: float = Field(0.0, ge=0.0, lt=0.9, description="Share of encoder FLOPs to remove by structured head/neuron pruning (0 disables).")
    budget: float = Field(1.0, ge=0.0, description="Largest allowed drop of the task metric, in points (1.0 = one accuracy point); "
                          "causal-LM and seq2seq: largest allowed rise of test perplexity, in percent.")
    parity_tolerance: float | None = Field(
        None, gt=0, description="Largest allowed max-abs logit difference of the fp32 ONNX artifact; unset: 1e-4, and 1e-3 for causal-LM "
        "and seq2seq, whose deep decoders reach the 1e-4 level between PyTorch's own kernels (SDPA and eager attention differ by "
        "9.4e-5 on SmolLM2's logits, which reach 45 in magnitude).")
    calibration_samples: int = Field(256, ge=8, description="Training examples used for static-int8 calibration.")
    search_train_samples: int = Field(2000, ge=0, description="Training examples (unseen by calibration) added to validation to judge int8 drops.")
    importance_samples: int = Field(1024, ge=8, description="Training examples used for pruning importance (Fisher) and mask tuning.")
    per_channel: bool = Field(True, description="Per-channel weight scales for int8 (usually more accurate at no speed cost).")
    optimize_graph: bool | None = Field(
        None, description="Apply ONNX Runtime's offline transformer fusions (attention, LayerNorm, GELU) where they match; "
        "unset: on for GPU targets, off for CPU, where the fused kernels measured slower (bench/results/export_speed.md).")
    disabled_optimizers: list[str] | None = Field(
        None, description="ONNX Runtime session fusions to turn off, recorded in export.json and used by every peftstd session; "
        "unset: SkipLayerNormFusion for CPU targets (ORT's fused kernel measured 3x slower than Add + LayerNormalization), none for GPU.")
    batch_size: int = Field(32, ge=1, description="Batch size of the verification passes.")
    kv_cache: bool = Field(True, description="Causal-LM and seq2seq: export the decoder with past key/value inputs and outputs, so "
                           "generation reuses them (optimum's `-with-past` export); false exports logits without a cache.")
    generation_samples: int = Field(16, ge=1, description="Causal-LM and seq2seq: held-out test prompts decoded greedily by the artifact "
                                    "and by PyTorch, to check the cached decoding path step by step.")
    gguf_types: list[GgufType] = Field(
        ["f16", "q8_0", "q4_k_m"], min_length=1, description="GGUF: the types written, each gated on its own (llama.cpp's names, any case).")
    gguf_budgets: dict[GgufType, float] = Field(
        {"q4_k_m": 10.0, "q4_0": 10.0}, description="GGUF: the perplexity budget (percent rise) of a type, where it is not `budget`; "
        "4-bit types lose more by design (measured in bench/results/gguf_export.md).")
    speed_check: bool = Field(True, description="Time every artifact against PyTorch (batch 1 and 8, sequence 128) for the export card.")

    @field_validator("gguf_types", "gguf_budgets", mode="before")
    @classmethod
    def lower_case(cls, value):
        """llama.cpp writes Q8_0, Ollama q8_0: either is taken."""
        if isinstance(value, list):
            return [v.lower() if isinstance(v, str) else v for v in value]
        if isinstance(value, dict):
            return {k.lower() if isinstance(k, str) else k: v for k, v in value.items()}
        return value

    @field_validator("gguf_budgets")
    @classmethod
    def non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = sorted(kind for kind, budget in value.items() if budget < 0)
        if negative:
            raise ValueError(f"a budget is the largest allowed rise in percent, 0 or more; negative for {', '.join(negative)}")
        return value

    def gguf_budget_for(self, kind: str) -> float:
        return self.gguf_budgets.get(kind, self.budget)

    def parity_for(self, generative: bool) -> float:
        """The fp32 parity tolerance of a task (see `parity_tolerance`)."""
        return self.parity_tolerance or (1e-3 if generative else 1e-4)

    @property
    def offline_fusions(self) -> bool:
        return self.target == "gpu" if self.optimize_graph is None else self.optimize_graph

    @property
    def session_disabled_optimizers(self) -> list[str]:
        if self.disabled_optimizers is not None:
            return self.disabled_optimizers
        return ["SkipLayerNormFusion"] if self.target == "cpu" else []


def load_profile(path: str | None, overrides: dict) -> ExportProfile:
    raw: dict = {}
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"export profile {path!r} does not exist")
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raise ConfigError(f"export profile {path!r} is not valid YAML") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"export profile {path!r} must hold a mapping of settings")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExportProfile.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"export profile: {describe(error, ExportProfile)}") from None
