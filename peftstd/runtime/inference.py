"""Run PyTorch models and ONNX artifacts on the same padded batches, so every comparison is like for like."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from peftstd.runtime.taskdata import TaskData

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def batches(tokenizer, data: TaskData, batch_size: int, max_length: int, fixed_length: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Batches in the data's own order, each padded to its longest member (lengths vary across batches),
    or all to `max_length` when `fixed_length` (histogram calibrators need one shape)."""
    padding = "max_length" if fixed_length else True
    for start in range(0, len(data.texts), batch_size):
        end = start + batch_size
        if data.features is not None:  # question answering: the context windows the run's encoding made
            from transformers.data.data_collator import pad_without_fast_tokenizer_warning  # what HF's collators call

            features = [{k: v for k, v in f.items() if k in MODEL_INPUTS} for f in data.features[start:end]]
            encoded = pad_without_fast_tokenizer_warning(tokenizer, features, padding=padding, return_tensors="np",
                                                         max_length=max_length if fixed_length else None)
        elif data.words is not None:  # token classification: the words as the run's tokenization saw them
            encoded = tokenizer(data.words[start:end], is_split_into_words=True, padding=padding, truncation=True,
                                max_length=max_length, return_tensors="np")
        else:
            pairs = data.pairs[start:end] if data.pairs else None
            encoded = tokenizer(data.texts[start:end], pairs, padding=padding, truncation=True, max_length=max_length, return_tensors="np")
        yield {k: v.astype(np.int64) for k, v in encoded.items()}


SPAN_OUTPUTS = ("start_logits", "end_logits")  # question answering


def output_array(output) -> torch.Tensor:
    """A model output as one tensor: the logits, or a QA model's start and end logits stacked on a last axis."""
    if getattr(output, "start_logits", None) is not None:
        return torch.stack([output.start_logits, output.end_logits], dim=-1)
    return output.logits


def output_names(session) -> list[str]:
    """The ONNX outputs that `onnx_logits` reads: the logits, or the start and end logits."""
    names = [o.name for o in session.get_outputs()]
    return list(SPAN_OUTPUTS) if SPAN_OUTPUTS[0] in names else ["logits"]


def run_session(session, feed: dict[str, np.ndarray]) -> np.ndarray:
    """One session call; several outputs (start/end logits) are stacked on a last axis, as `output_array` does."""
    outputs = session.run(output_names(session), feed)
    return outputs[0] if len(outputs) == 1 else np.stack(outputs, axis=-1)


def stack(outputs: list[np.ndarray], max_length: int) -> np.ndarray:
    """One array of per-batch logits; per-token logits are padded (with 0) to `max_length` first."""
    if outputs[0].ndim == 3:
        outputs = [np.pad(x, ((0, 0), (0, max_length - x.shape[1]), (0, 0))) for x in outputs]
    return np.concatenate(outputs)


@torch.no_grad()
def torch_logits(model, tokenizer, data: TaskData, batch_size: int, max_length: int) -> np.ndarray:
    """Logits of every example in `data`'s order, run in batches of similar length (`TaskData.by_length`)."""
    model.eval()
    data, restore = data.by_length()
    out = [output_array(model(**{k: torch.from_numpy(v) for k, v in batch.items()})).float().numpy()
           for batch in batches(tokenizer, data, batch_size, max_length)]
    return stack(out, max_length)[restore]


def model_inputs(model, batch: dict) -> dict:
    """The forward inputs of a teacher-forced batch; seq2seq decoder inputs are the labels shifted right, as
    transformers' models do it, from the config alone so that optimum's ORTModel (which lacks the method) works too."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    if model.config.is_encoder_decoder:
        from transformers.models.bart.modeling_bart import shift_tokens_right

        inputs["decoder_input_ids"] = shift_tokens_right(batch["labels"], model.config.pad_token_id, model.config.decoder_start_token_id)
    return inputs


def scored_logits(source, inputs: dict, scored: torch.Tensor, label_shift: int) -> torch.Tensor:
    """The logits of `source` at the scored positions, [scored tokens, vocabulary]."""
    logits = source(**inputs).logits.float()
    return logits[:, : logits.shape[1] - label_shift][scored]


def onnx_session(path: Path | bytes, threads: int | None = None, disabled_optimizers: list[str] | None = None, spinning: bool = True):
    """A CPU session of a file or a serialized model; `disabled_optimizers` defaults to those recorded in the
    artifact's export.json.

    `spinning=False` stops the intra-op threads from busy-waiting after each run. Benchmarks need that:
    with several sessions interleaved on 2 cores, one session's spinning threads take the cores from the
    next (fp32 MiniLM at batch 1 measured 31.6 ms with spinning against 9.6 ms without)."""
    import onnxruntime as ort

    if disabled_optimizers is None and isinstance(path, bytes):
        disabled_optimizers = []
    if disabled_optimizers is None:
        from peftstd.runtime.folders import ExportFolder

        folder = Path(path).parent
        disabled_optimizers = ExportFolder(folder).disabled_optimizers if ExportFolder.is_export(folder) else []
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers))
    actual = session.get_providers()
    if actual[0] != "CPUExecutionProvider":
        raise RuntimeError(f"asked for CPUExecutionProvider, ONNX Runtime gave {actual}")
    return session


def engine_logits(engine, tokenizer, data: TaskData, batch_size: int, max_length: int) -> np.ndarray:
    """`onnx_logits` through a `runtime.engines.Engine` (ONNX Runtime or OpenVINO)."""
    data, restore = data.by_length()
    return stack([engine(batch) for batch in batches(tokenizer, data, batch_size, max_length)], max_length)[restore]


def onnx_logits(session, tokenizer, data: TaskData, batch_size: int, max_length: int) -> np.ndarray:
    """Logits of every example in `data`'s order, run in batches of similar length (`TaskData.by_length`)."""
    names = {i.name for i in session.get_inputs()}
    data, restore = data.by_length()
    out = [run_session(session, {k: v for k, v in batch.items() if k in names}) for batch in batches(tokenizer, data, batch_size, max_length)]
    return stack(out, max_length)[restore]
