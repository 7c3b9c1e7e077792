"""One typed reader for run directories and export folders: what a finished run and a passed export are is
decided here, once, instead of by `json.loads` in every command.

The records are pydantic models over the files the recipes and the export pipeline write. They type the keys
commands read and keep the rest (`extra="allow"`), so a newer writer never breaks an older reader.
"""

from __future__ import annotations

import datetime
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peftstd.errors import UserError
from peftstd.tasks import GENERATIVE_TASKS


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class TaskRecord(Record):
    type: str
    settings: dict[str, Any] | None = None


class MethodRecord(Record):
    name: str


class BaseModelRecord(Record):
    path: str
    quantization: dict[str, Any] | None = None  # model.quantization of the run: the base trained in 4 or 8 bits

    def quantization_section(self):
        """The run's `model.quantization` settings, to load the base the way it was trained (None: float)."""
        from peftstd.models.quantization import QuantizationSection

        return QuantizationSection(**self.quantization) if self.quantization else None


class DataRecord(Record):
    max_length: int
    sha256: dict[str, str] = {}


class Manifest(Record):
    """manifest.json of a finished run (the keys peftstd reads back)."""

    task: TaskRecord
    method: MethodRecord
    base_model: BaseModelRecord
    data: DataRecord


class RuntimeGate(Record):
    """The same artifact judged on another runtime (OpenVINO) at export time."""

    passed: bool
    value: float
    drop_points: float


class GateArtifact(Record):
    artifact: str
    file: str
    passed: bool
    value: float
    drop_points: float
    runtime: str = "onnxruntime"  # what the gate ran it on: onnxruntime (ONNX files) or llama.cpp (GGUF files)
    openvino: RuntimeGate | None = None

    def passed_on(self, runtime: str) -> bool:
        if runtime == self.runtime:
            return self.passed
        return self.passed and runtime == "openvino" and self.openvino is not None and self.openvino.passed


class Gate(Record):
    metric: str
    trained_metric: float
    examples: int
    budget_points: float
    artifacts: list[GateArtifact]


class Timing(Record):
    """One artifact on one runtime, timed by `runtime.choice`: rows per second at each batch size, and their
    geometric mean (the score it is ranked by)."""

    artifact: str
    runtime: str
    samples_per_s: dict[int, float]
    score: float


class Choice(Record):
    """What serves fastest on one machine (export.json `choice`, or the user cache for another CPU), best first."""

    machine: dict[str, Any]
    lengths: list[int]
    timings: list[Timing]


class ExportRecord(Record):
    """export.json of an export folder (the keys peftstd reads back)."""

    source_run: str
    task: str
    status: str
    max_length: int
    gate: Gate
    runtime: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    task_settings: dict[str, Any] | None = None
    files: dict[str, str] = {}
    created: str | None = None
    choice: Choice | None = None


OTHER = "(other)"  # a label the drift reference never had


class FeatureProfile(Record):
    """Counts of one feature over its bins: `categories` for a categorical feature, else the inner `edges` of a
    histogram (len(edges) + 1 bins, each [edge, next edge))."""

    categories: list[str] | None = None
    edges: list[float] | None = None
    counts: list[int]

    def bin(self, values: list) -> np.ndarray:
        if self.categories is not None:
            index = {c: i for i, c in enumerate(self.categories)}
            other = index.get(OTHER, len(self.categories) - 1)
            return np.bincount(np.array([index.get(v, other) for v in values], dtype=np.int64), minlength=len(self.categories))
        return np.bincount(np.searchsorted(self.edges, np.asarray(values, dtype=np.float64), side="right"), minlength=len(self.edges) + 1)


class MonitorRecord(Record):
    """monitor.json of an export folder: the reference distributions drift (`runtime/drift.py`) is measured against."""

    split: str = "test"
    examples: int
    artifact: str
    runtime: str
    features: dict[str, FeatureProfile]
    rates: dict[str, float] = Field(default_factory=dict)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{str(path)!r} is not readable JSON ({str(error).splitlines()[0]})") from None


def read_record(path: Path, model: type[Record]) -> Record:
    """A JSON file parsed into `model`, or a one-line error naming the file and the first problem."""
    try:
        return model.model_validate(read_json(path))
    except ValidationError as error:
        first = error.errors()[0]
        raise UserError(f"{str(path)!r} is not a readable {model.__name__} ({'.'.join(map(str, first['loc']))}: {first['msg']})") from None


class Folder:
    """A folder recognised by its record file (written last, so its presence means the folder is complete)."""

    RECORD: str
    MISSING: str  # the one-line error when the record is absent, formatted with the path

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / self.RECORD).is_file():
            raise UserError(self.MISSING.format(path=str(self.path)))

    @classmethod
    def holds(cls, path: str | Path) -> bool:
        return (Path(path) / cls.RECORD).is_file()

    @cached_property
    def labels(self) -> list[str]:
        return read_json(self.path / "labels.json")

    task: str

    @property
    def generative(self) -> bool:
        return self.task in GENERATIVE_TASKS


class RunFolder(Folder):
    """A finished run directory: it has manifest.json (written when the run ends) and labels.json."""

    RECORD = "manifest.json"
    MISSING = "{path!r} is not a finished run directory (no manifest.json); finish or resume it first"

    @staticmethod
    def is_run(path: Path) -> bool:
        return RunFolder.holds(path)

    @cached_property
    def manifest(self) -> Manifest:
        return read_record(self.path / "manifest.json", Manifest)

    @cached_property
    def raw_manifest(self) -> dict:
        return read_json(self.path / "manifest.json")

    @cached_property
    def metrics(self) -> dict:
        return read_json(self.path / "metrics.json")

    @property
    def task(self) -> str:
        return self.manifest.task.type

    @property
    def max_length(self) -> int:
        return self.manifest.data.max_length

    def test_predictions(self) -> list[dict]:
        path = self.path / "predictions" / "test.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class ExportFolder(Folder):
    """An export folder: export.json, labels.json, the tokenizer and the artifacts the gate judged."""

    RECORD = "export.json"
    MISSING = "{path!r} is not an export folder (no export.json); make one with `peftstd export RUN`"

    @staticmethod
    def is_export(path: Path) -> bool:
        return ExportFolder.holds(path)

    @cached_property
    def record(self) -> ExportRecord:
        return read_record(self.path / "export.json", ExportRecord)

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def max_length(self) -> int:
        return self.record.max_length

    @property
    def source_run(self) -> RunFolder:
        return RunFolder(self.record.source_run)

    @property
    def disabled_optimizers(self) -> list[str]:
        """The ONNX Runtime session settings the gate verified the artifacts with (export.json `runtime`)."""
        return list(self.record.runtime.get("disabled_optimizers", []))

    @property
    def runtime(self) -> str:
        """The runtime the export's artifacts were gated on by default: llama.cpp for GGUF exports."""
        return str(self.record.runtime.get("engine", "onnxruntime"))

    @property
    def kv_cache(self) -> bool:
        return bool(self.record.stages.get("onnx", {}).get("kv_cache", True))

    @property
    def created(self) -> str:
        """When the export was written: export.json's own field, else its modification time."""
        if self.record.created:
            return self.record.created
        mtime = (self.path / "export.json").stat().st_mtime
        return datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat(timespec="seconds")

    @property
    def name(self) -> str:
        """The name a model is served or deployed under by default: the run's name for a run's `export/` folder,
        else the folder's (not resolved: runs/latest/export is "latest", not the link target's name)."""
        where = self.path.absolute()
        return where.parent.name if where.name == "export" else where.name

    @cached_property
    def monitor(self):
        """The drift reference (monitor.json), or None for exports made before peftstd wrote one."""
        path = self.path / "monitor.json"
        return read_record(path, MonitorRecord) if path.is_file() else None

    def artifacts(self) -> dict[str, GateArtifact]:
        """Gate records of the artifacts in the folder by kind ('fp32', 'int8-dynamic', ...); artifacts that failed
        while another of their kind passed were not shipped and are left out."""
        return {a.artifact: a for a in self.record.gate.artifacts if getattr(a, "shipped", True)}

    def artifact(self, name: str) -> GateArtifact:
        """The gate record of an artifact named by kind ('int8-static'), file ('model.int8.onnx') or 'int8'
        (the export's int8 artifact: static first, since its results do not depend on the batch)."""
        records = self.artifacts()
        by_file = {a.file: a for a in records.values()}
        if name == "int8":
            name = next((k for k in ("int8-static", "int8-dynamic", "int8-weights", "int8-qdq") if k in records), name)
        found = records.get(name) or by_file.get(name) or (records.get("fp32") if name == "model.onnx" else None)
        removed = {a.artifact: a for a in self.record.gate.artifacts if not getattr(a, "shipped", True)}
        removed.update({a.file: a for a in removed.values()})
        if found is None and name in removed:
            raise UserError(f"{name!r} failed the export gate and was not shipped ({getattr(removed[name], 'not_shipped', '')}); "
                            f"artifacts here: {', '.join(sorted(records))}")
        if found is None:
            allowed = ", ".join(sorted(records) + sorted(by_file))
            raise UserError(f"{name!r} is not an artifact of {str(self.path)!r}; artifacts here: {allowed}")
        return found

    def artifact_path(self, name: str) -> Path:
        """The file (or, for generative int8, the folder) of an artifact; the export's files must be there."""
        record = self.artifact(name)
        path = self.path / record.file  # generative artifacts are folders ('.' and 'int8')
        if not path.exists():
            raise UserError(f"artifact {record.artifact} ({str(path)!r}) is missing from the export folder")
        return path


def open_target(path: str | Path) -> tuple[RunFolder, ExportFolder | None]:
    """(run, export or None) for a path that is a run directory or an export folder."""
    path = Path(path)
    if ExportFolder.is_export(path):
        export = ExportFolder(path)
        return export.source_run, export
    if RunFolder.is_run(path):
        return RunFolder(path), None
    raise UserError(f"{str(path)!r} is neither a finished run (manifest.json) nor an export folder (export.json)")
