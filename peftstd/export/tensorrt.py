"""Stage 6: a TensorRT engine from the ONNX artifact, where TensorRT and an NVIDIA GPU exist."""

from __future__ import annotations

from pathlib import Path


def missing_requirements() -> list[str]:
    """What this machine lacks for TensorRT, in words; empty when the engine can be built."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("the tensorrt Python package (pip install tensorrt)")
    import torch

    if not torch.cuda.is_available():
        missing.append("an NVIDIA GPU with CUDA")
    return missing


def build_engine(onnx_path: Path, plan_path: Path, int8: bool) -> dict:
    """Serialize an engine (fp16, or int8 from a QDQ graph) with dynamic batch and sequence profiles."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        profile.set_shape(network.get_input(i).name, (1, 8), (8, 128), (64, 512))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    plan_path.write_bytes(bytes(plan))
    return {"engine": plan_path.name, "precision": "int8+fp16" if int8 else "fp16", "tensorrt": trt.__version__}
