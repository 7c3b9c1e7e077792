"""Export: merge -> structured prune -> ONNX -> quantize -> verify, gated by parity on held-out data."""
