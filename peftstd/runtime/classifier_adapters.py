"""Text-classification LoRA runs of one base model served from one copy of it: each run's LoRA matrices and its own
classification head (peft's `modules_to_save`) are loaded into one PeftModel under the run's served name, and a
call runs one of them through peft's `adapter_names`. Heads may have different label sets: the base is built with
the widest head, a narrower head's weights are padded with zero rows, and each run's logits are cut back to its own
labels, so its probabilities are the ones its own model gives.

The merged ONNX export of each run stays the fastest way to serve one task alone; this is for many tasks of one base
in the memory of one (S-LoRA's and LoRAX's point, for encoders).
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from peftstd.errors import UserError
from peftstd.runtime.folders import RunFolder
from peftstd.runtime.inference import MODEL_INPUTS
from peftstd.runtime.load import adapter_of, trained_head_follows
from peftstd.runtime.predictors import ClassificationPredictor

TASK = "text-classification"


class SharedClassifierBase:
    """One base model with every run's adapter and head under its name. Calls take a lock: peft's `adapter_names`
    works through hooks placed on the shared modules for the length of a forward, so two forwards at once would each
    see the other's hooks."""

    def __init__(self, base: Path, runs: dict[str, RunFolder], threads: int | None = None):
        from peftstd.tasks import get_task

        if threads:
            torch.set_num_threads(threads)
        widest = max(runs.values(), key=lambda run: len(run.labels))
        self.width = len(widest.labels)
        with trained_head_follows():
            self.base_model = get_task(TASK, widest.labels, widest.manifest.task.settings).load_model(base, widest.labels)
        self.base, self.model, self.labels, self.adapters = base, None, {}, {}  # by served name: labels, adapter folder
        self.lock = threading.Lock()
        for name, run in runs.items():
            self.add(name, run)
        self.description = f"pytorch {torch.__version__} CPU fp32, {torch.get_num_threads()} threads (peft adapters of one base)"

    def add(self, name: str, run: RunFolder) -> None:
        from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = adapter_of(run, TASK)
        config = PeftConfig.from_pretrained(folder)
        config.inference_mode = True
        if self.model is None:
            self.model = get_peft_model(self.base_model, config, adapter_name=name).eval()
        else:
            self.model.add_adapter(name, config)
        own = len(run.labels)
        weights = load_file(folder / "adapter_model.safetensors")
        heads = tuple(config.modules_to_save or ())
        # a narrower head: zero rows for the labels it does not have (their logits are cut off in `__call__`)
        weights = {key: torch.cat([value, value.new_zeros(self.width - own, *value.shape[1:])])
                   if own < self.width and value.shape[0] == own and any(f".{h}." in key for h in heads) else value
                   for key, value in weights.items()}
        unused = set_peft_model_state_dict(self.model, weights, adapter_name=name).unexpected_keys
        if unused:
            raise UserError(f"{str(folder)!r} holds weights its base {str(self.base)!r} has no place for: {', '.join(unused[:3])}")
        self.model.eval()
        self.labels[name], self.adapters[name] = run.labels, folder

    @cached_property
    def input_names(self) -> set[str]:
        """The tokenizer outputs the model takes (MODEL_INPUTS its forward names)."""
        import inspect

        return set(MODEL_INPUTS) & set(inspect.signature(self.base_model.forward).parameters)

    def __call__(self, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {key: torch.from_numpy(value) for key, value in feed.items()}
        with self.lock, torch.inference_mode():
            logits = self.model(**inputs, adapter_names=[name] * len(inputs["input_ids"])).logits
        return logits[:, : len(self.labels[name])].float().numpy()


class AdapterEngine:
    """The engine a predictor calls: the shared base with this name's adapter."""

    streams = 1

    def __init__(self, shared: SharedClassifierBase, name: str):
        self.shared, self.name = shared, name
        self.input_names, self.device = shared.input_names, shared.description

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.shared(self.name, feed)


class AdapterClassificationPredictor(ClassificationPredictor):
    """A text-classification LoRA run served as an adapter of a shared base: the same inputs and answers as its
    export's predictor, without an export gate (the run's own PyTorch model is what answers)."""

    runtime = "pytorch"

    def __init__(self, name: str, run: RunFolder, shared: SharedClassifierBase):
        from transformers import AutoTokenizer

        self.run_folder, self.shared = run, shared
        self.export = self.record = None
        self.labels = run.labels
        self.max_length = run.max_length
        self.tokenizer = AutoTokenizer.from_pretrained(shared.adapters[name])
        self.batch_independent = True
        self.engine = AdapterEngine(shared, name)
        self.device, self.streams = self.engine.device, 1

    @property
    def monitor(self):
        return None

    def describe(self) -> dict:
        return {"task": self.task, "labels": self.labels, "artifact": "adapter", "runtime": self.runtime, "device": self.device,
                "max_length": self.max_length, "rows_share_calls": True, "base_model": str(self.shared.base),
                "adapters_on_base": sorted(self.shared.adapters), "run": str(self.run_folder.path)}


def adapter_predictors(runs: dict[str, RunFolder], threads: int | None = None) -> dict[str, AdapterClassificationPredictor]:
    """Every text-classification LoRA run as a predictor; runs of one base share one `SharedClassifierBase`."""
    by_base: dict[str, dict[str, RunFolder]] = {}
    for name, run in runs.items():
        by_base.setdefault(run.manifest.base_model.path, {})[name] = run
    predictors = {}
    for base, group in by_base.items():
        shared = SharedClassifierBase(Path(base), group, threads)
        predictors.update({name: AdapterClassificationPredictor(name, run, shared) for name, run in group.items()})
    return predictors
