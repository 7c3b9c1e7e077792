"""Stage 7, the gate: artifacts against the trained model on the run's held-out test split.

fp32 ONNX must match the PyTorch model it was exported from to `parity_tolerance` max-abs logits, and
every artifact's task metric must stay within `budget` points of the trained model's. A failure is a
failure: the export is marked failed and the command exits non-zero, naming the worst layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def metric_points(task, logits: np.ndarray, label_ids: np.ndarray) -> float:
    return 100.0 * task.metrics(logits, label_ids)[task.primary_metric]


def initializer_modules(graph) -> dict[str, str]:
    """ONNX initializer -> the PyTorch module that used it, from the dynamo exporter's node metadata."""
    import ast

    initializers = {init.name for init in graph.initializer}
    sources: dict[str, str] = {}
    for node in graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        modules = [scope for scope in ast.literal_eval(scopes) if scope.startswith("model.")] if scopes else []
        if modules:  # the list ends with the FX op name; the last "model.*" entry is the module
            module = modules[-1].removeprefix("model.")
            for name in node.input:
                if name in initializers:
                    sources.setdefault(name, module)
    return sources


def worst_initializer(onnx_path: Path, torch_model) -> dict | None:
    """The exported weight that differs most from the PyTorch parameter it came from.

    The dynamo exporter stores many weights transposed under generated names (val_51, ...); the
    node metadata names the module that used each one, and where metadata is gone (fused nodes)
    the closest parameter of the same shape, in either orientation, stands in.
    """
    import onnx
    from onnx import numpy_helper

    parameters = {name: p.detach().float().numpy() for name, p in torch_model.state_dict().items()}
    graph = onnx.load(str(onnx_path)).graph
    modules = initializer_modules(graph)

    def differences(init_name: str, value: np.ndarray):
        direct = init_name.removeprefix("model.")
        names = [direct] if direct in parameters else [n for n in parameters if modules.get(init_name) and n.startswith(modules[init_name] + ".")]
        for name in names or parameters:
            for array in (parameters[name], parameters[name].T):
                if array.shape == value.shape:
                    yield name, float(np.abs(value - array).max())

    worst = None
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype.kind != "f" or value.size < 2:
            continue
        match = min(differences(init.name, value), key=lambda item: item[1], default=None)
        if match and (worst is None or match[1] > worst["max_abs_difference"]):
            worst = {"layer": match[0], "onnx_initializer": init.name, "max_abs_difference": match[1]}
    return worst


def judge(name: str, logits: np.ndarray, reference_points: float, exported_logits: np.ndarray | None,
          task, label_ids: np.ndarray, budget: float, tolerance: float) -> dict:
    """One artifact's gate record; `exported_logits` is given for the fp32 artifact (parity check)."""
    points = metric_points(task, logits, label_ids)
    record = {
        "artifact": name,
        "metric": task.primary_metric,
        "value": points / 100.0,
        "drop_points": reference_points - points,
        "metric_passed": reference_points - points <= budget,
    }
    if exported_logits is not None:
        record["max_abs_logit_difference"] = float(np.abs(logits - exported_logits).max())
        record["parity_passed"] = record["max_abs_logit_difference"] <= tolerance
    record["passed"] = record["metric_passed"] and record.get("parity_passed", True)
    return record
