"""Stage 4: ONNX with dynamic batch and sequence axes through the dynamo-based `torch.onnx.export`.

The dynamo exporter matched PyTorch to ~1e-7 on shapes it never saw; the legacy tracer froze shapes
and drifted by 8e-3 in our checks, so it is not used.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TaskOutputs(torch.nn.Module):
    """Positional inputs in, the task's outputs out (logits, or a QA model's start and end logits): the
    signature and output names optimum's ORTModel classes expect."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return (output.start_logits, output.end_logits) if getattr(output, "start_logits", None) is not None else output.logits


def eager_attention(model) -> tuple[torch.nn.Module, str]:
    """A copy of `model` with eager (matmul + softmax) attention, when its SDPA modules allow the switch.

    transformers 4.57's BERT-family models pick an SDPA subclass of their eager attention module at
    construction, and `set_attn_implementation` cannot change them afterwards. The decomposed SDPA graph
    adds Slice/Concat/Where/Expand work: ONNX Runtime ran the eager graph 4% (batch 32) to 16% (batch 1)
    faster in int8 on this CPU. Both classes share their parameters, so the switch is exact; the gate's
    fp32 parity check proves it for each export.
    """
    import copy

    def switchable(module) -> bool:  # an SDPA class that only subclasses its eager twin (not, e.g., an adapters mixin)
        bases = type(module).__bases__
        return "Sdpa" in type(module).__name__ and len(bases) == 1 and "Sdpa" not in bases[0].__name__

    sdpa = [m for m in model.modules() if "Sdpa" in type(m).__name__]
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or not sdpa or not all(map(switchable, sdpa)):
        return model, getattr(model.config, "_attn_implementation", None) or "default"
    eager = copy.deepcopy(model)
    for module in eager.modules():
        if switchable(module):
            module.__class__ = type(module).__bases__[0]
        if getattr(module, "attn_implementation", None) == "sdpa":  # BertModel keeps its own copy for mask building
            module.attn_implementation = "eager"
    eager.config._attn_implementation = "eager"
    return eager, "eager"


def export_onnx(model, tokenizer, out: Path) -> str:
    """Write `out` (a single self-contained file); returns the attention implementation exported."""
    model, attention = eager_attention(model)
    sample = tokenizer(["a short example", "a somewhat longer example sentence for export"], padding=True, return_tensors="pt")
    names = tuple(n for n in INPUTS if n in sample)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    wrapper = TaskOutputs(model.eval()).eval()
    with torch.no_grad():
        outputs = ["start_logits", "end_logits"] if isinstance(wrapper(*(sample[n] for n in names)), tuple) else ["logits"]
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines of its own
        program = torch.onnx.export(
            wrapper, tuple(sample[n] for n in names), dynamo=True, input_names=list(names), output_names=outputs,
            dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
        )
    program.save(str(out), external_data=False)
    return attention


def optimize_graph(path: Path, out: Path, model_config) -> dict:
    """ONNX Runtime's offline transformer fusions; kept only when they fused something."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "xlm-roberta": "bert", "gpt2": "gpt2"}.get(model_config.model_type)
    if model_type is None:
        return {"applied": False, "reason": f"no fusion recipe for {model_config.model_type}"}
    optimized = optimize_model(
        str(path), model_type=model_type, num_heads=model_config.num_attention_heads, hidden_size=model_config.hidden_size
    )
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if not fused:
        return {"applied": False, "reason": "no pattern matched the exported graph"}
    onnx.save(optimized.model, str(out))
    return {"applied": True, "fused": fused}


def op_histogram(path: Path) -> dict[str, int]:
    import collections

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(collections.Counter(node.op_type for node in graph.node).most_common())
