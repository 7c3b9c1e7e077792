"""`peftstd triton EXPORT --out DIR`: an export's gated ONNX artifact as a Triton Inference Server model repository,
for users who already run Triton.

    DIR/model_repository/NAME/config.pbtxt      inputs and outputs read from the ONNX graph, dynamic batching,
    DIR/model_repository/NAME/1/model.onnx      instance count; classification logits carry labels.txt
    DIR/model_repository/NAME/labels.txt
    DIR/tokenizers/NAME/                        the tokenizer: Triton takes token ids, clients tokenize

Triton batches requests of equal shape (clients pad to a common length), so only artifacts whose rows do not depend
on their neighbours are written: static int8 or fp32, not dynamic int8 (see `runtime.predictors.BATCH_DEPENDENT`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from peftstd.errors import UserError
from peftstd.runtime.folders import ExportFolder
from peftstd.runtime.predictors import BATCH_DEPENDENT

TRITON_ORDER = ("int8-static", "fp32")
ONNX_TO_TRITON = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16", 11: "TYPE_FP64", 9: "TYPE_BOOL"}


def triton_artifact(export: ExportFolder, artifact: str):
    if artifact != "auto":
        record = export.artifact(artifact)
        if record.runtime != "onnxruntime":
            raise UserError(f"artifact {record.artifact} is {record.runtime}'s format, not an ONNX file for Triton's onnxruntime backend; "
                            f"choose one of {', '.join(TRITON_ORDER)}")
        if record.artifact in BATCH_DEPENDENT:
            raise UserError(f"artifact {record.artifact} computes its scales over the whole batch, so Triton's batching would change "
                            f"its answers; choose one of {', '.join(TRITON_ORDER)}")
        return record
    records = export.artifacts()
    for kind in TRITON_ORDER:
        if kind in records and records[kind].passed:
            return records[kind]
    raise UserError(f"{str(export.path)!r} has no passed artifact Triton can batch ({', '.join(TRITON_ORDER)})")


def tensors(values) -> list[dict]:
    """Name, Triton data type and dims without the batch axis of graph inputs or outputs (symbolic dims: -1)."""
    found = []
    for value in values:
        kind = value.type.tensor_type
        if kind.elem_type not in ONNX_TO_TRITON:
            raise UserError(f"ONNX tensor {value.name!r} has element type {kind.elem_type}, which Triton's config has no name for here")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim][1:]
        found.append({"name": value.name, "data_type": ONNX_TO_TRITON[kind.elem_type], "dims": dims})
    return found


def block(tensor: dict, extra: str = "") -> str:
    return (f'  {{\n    name: "{tensor["name"]}"\n    data_type: {tensor["data_type"]}\n    dims: [ {", ".join(map(str, tensor["dims"]))} ]\n'
            f"{extra}  }}")


def config_text(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int, instances: int, delay_us: int,
                labels: bool) -> str:
    label_line = '    label_filename: "labels.txt"\n' if labels else ""
    separator = ",\n"
    return (f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{separator.join(block(t) for t in inputs)}\n]\n"
            f"output [\n{separator.join(block(t, label_line) for t in outputs)}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"
            f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n")


def write_repository(export_dir: Path, out: Path, name: str, artifact: str = "auto", instances: int = 1, max_batch_size: int = 32,
                     delay_us: int = 500) -> Path:
    """The model repository folder of `export_dir` under `out`; its path."""
    import onnx

    from peftstd.basics.atomic import replace_dir, write_text

    export = ExportFolder(export_dir)
    if export.generative:
        raise UserError(f"{str(export_dir)!r} is a {export.task} export; `peftstd triton` writes encoder exports (generation "
                        "runs its own decoding loop: serve it with `peftstd serve`)")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"model name {name!r} must be letters, digits, '-' or '_'")
    record = triton_artifact(export, artifact)
    source = export.artifact_path(record.artifact)
    model = onnx.load(str(source), load_external_data=False)
    inputs, outputs = tensors(model.graph.input), tensors(model.graph.output)
    external = {entry.value for init in model.graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL
                for entry in init.external_data if entry.key == "location"}
    labelled = export.task == "text-classification"

    def fill(folder: Path) -> None:
        version = folder / "1"
        version.mkdir()
        shutil.copy2(source, version / "model.onnx")
        for location in external:
            shutil.copy2(source.parent / location, version / location)
        if labelled:
            write_text(folder / "labels.txt", "".join(f"{label}\n" for label in export.labels))
        write_text(folder / "config.pbtxt", config_text(name, inputs, outputs, max_batch_size, instances, delay_us, labelled))

    target = out / "model_repository" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(target, fill)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(export.path).save_pretrained(out / "tokenizers" / name)
    return target
