"""optimum's int8 route for the same run, the peer `peftstd bench --peers optimum` times peftstd's pick against.

optimum's documented CPU route: export the merged model with ORTModel, then ORTQuantizer's dynamic int8 with one of
its CPU presets. The peer is taken at its best, not at one default: every preset (avx2, avx512, avx512_vnni; each
sets reduce_range and the operators for its instruction set), per-channel scales on and off, each run with ONNX
Runtime's default session and with peftstd's session settings; the bench keeps the fastest per grid cell.
"""

from __future__ import annotations

from pathlib import Path

PRESETS = ("avx2", "avx512", "avx512_vnni")


def optimum_int8(model, tokenizer, work: Path) -> dict[str, Path]:
    """{name: ONNX file} of optimum's dynamic int8 of `model` (merged, PyTorch) with each preset and scale choice."""
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    model.save_pretrained(work / "merged")
    tokenizer.save_pretrained(work / "merged")
    ORTModelForSequenceClassification.from_pretrained(work / "merged", export=True).save_pretrained(work / "optimum-fp32")
    out = {}
    for preset in PRESETS:
        for per_channel in (False, True):
            name = f"optimum-int8-{preset}{'-per-channel' if per_channel else ''}"
            config = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=per_channel)
            ORTQuantizer.from_pretrained(work / "optimum-fp32").quantize(save_dir=work / name, quantization_config=config)
            out[name] = next((work / name).glob("*.onnx"))
    return out
