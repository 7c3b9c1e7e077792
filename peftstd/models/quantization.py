"""`model.quantization`: a 4-bit (NF4/FP4, QLoRA) or 8-bit (LLM.int8) base model through bitsandbytes.

Only the frozen base is quantized; what trains (LoRA matrices, the task head) stays in float. The settings map
one to one onto transformers' `BitsAndBytesConfig`, so a run loads back with stock transformers + peft.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from peftstd.basics.section import Section

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class QuantizationSection(Section):
    bits: Literal[4, 8] = Field(4, description="4: NF4/FP4 weights (QLoRA); 8: LLM.int8 weights.")
    type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: NormalFloat4 (QLoRA's, for normally distributed weights) or FP4.")
    double_quant: bool = Field(True, description="4-bit: quantize the quantization constants too (QLoRA's double quantization, ~0.4 bit/weight saved).")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="4-bit: dtype the dequantized weights are multiplied in.")

    @model_validator(mode="after")
    def _four_bit_settings_need_four_bits(self) -> QuantizationSection:
        if self.bits == 8 and "type" in self.model_fields_set and self.type != "nf4":
            raise ValueError("model.quantization.type applies to bits: 4 only")
        return self

    def bnb_config(self, skip_modules: list[str]):
        """transformers' BitsAndBytesConfig for these settings; `skip_modules` (task heads) stay in float. None, not an
        empty list, when there are none: transformers then keeps the output layer in float itself (a tied LM head)."""
        import torch
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules or None)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.type, bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=getattr(torch, DTYPES[self.compute_dtype]),
                                  llm_int8_skip_modules=skip_modules or None)

    def describe(self) -> str:
        return "8-bit (LLM.int8)" if self.bits == 8 else f"4-bit {self.type.upper()}" + (" + double quant" if self.double_quant else "")


def weight_bytes(model) -> int:
    """Bytes of a loaded model's weights as stored (parameters, buffers, bitsandbytes' scaling constants):
    what quantization shrinks. Call it on the base model, before a method adds weights."""
    total = sum(b.numel() * b.element_size() for b in model.buffers())
    for parameter in model.parameters():
        total += parameter.numel() * parameter.element_size()
        state = getattr(parameter, "quant_state", None)  # 4-bit: absmax per block (itself quantized with double quant)
        for tensor in (getattr(state, "absmax", None), getattr(getattr(state, "state2", None), "absmax", None),
                       getattr(parameter, "SCB", None)):  # 8-bit: one scale per row
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total
