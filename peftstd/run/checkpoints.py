"""Training-state checkpoints: everything needed to continue a killed run bit-identically.

    checkpoints/step-00000120/
        trainable.safetensors   parameters with requires_grad (the whole model for full fine-tuning), whole tensors
        optimizer.pt            optimizer state (FSDP: gathered whole, keyed by parameter name; DeepSpeed ZeRO: the
                                list of every rank's partition)
        scheduler.pt            learning-rate schedule position
        scaler.pt               fp16 gradient-scaler state (fp16 runs only)
        method.pt               method state (AdaLoRA's importance scores and rank pattern)
        best.pt                 the best-so-far snapshot (restored before the test evaluation)
        rng.pt                  python/numpy/torch RNG states of every process, gathered to rank 0
        trainer_state.json      step, epoch, batches consumed in the epoch, history, selection
        checksums.json          sha256 of each file above; written last, so its presence marks completeness

Only rank 0 writes; a sharded (FSDP, ZeRO) model's tensors are gathered to it first. A checkpoint is built in a
temporary folder and renamed into place; a torn or corrupted checkpoint (missing or mismatching checksums) is never
loaded.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftstd.basics.atomic import replace_dir, write_json
from peftstd.basics.hashing import sha256_file
from peftstd.errors import UserError
from peftstd.training import sharding

PREFIX = "step-"
CHECKSUMS = "checksums.json"


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


@dataclass
class TrainerState:
    """The loop's own counters, saved with every checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    accumulation_counter: int = 0
    seen: int = 0
    tokens: int = 0  # padded tokens trained on, all processes (model FLOPs = FLOPs per token x tokens)
    running_loss: float = 0.0
    running_batches: int = 0
    train_seconds: float = 0.0
    history: dict[str, list] = field(default_factory=lambda: {"train": [], "validation": []})
    selection: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """Save, prune, verify and load the training-state checkpoints of one run."""

    def __init__(self, folder: Path, keep_last: int, accelerator):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.accelerator = accelerator

    def save(self, state: TrainerState, model, optimizer, scheduler, method, best_snapshot) -> None:
        from accelerate.utils import gather_object
        from safetensors.torch import save_file

        # collectives: every rank must call save() (a sharded model's tensors are gathered whole)
        rng = gather_object([rng_state()])
        layout = sharding.layout(self.accelerator)  # FSDP's optimizer state is keyed by name, ZeRO's is per rank
        if layout or self.accelerator.is_main_process:
            trainable, optimizer_state = sharding.full_state(model, only_trainable=True), sharding.optimizer_state(model, optimizer)
            best_snapshot = sharding.whole(best_snapshot)
        if self.accelerator.is_main_process:
            def fill(tmp: Path) -> None:
                save_file(trainable, tmp / "trainable.safetensors")
                torch.save(optimizer_state, tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                if self.accelerator.scaler is not None:
                    torch.save(self.accelerator.scaler.state_dict(), tmp / "scaler.pt")
                torch.save(method.state_dict(model), tmp / "method.pt")
                torch.save(best_snapshot, tmp / "best.pt")
                torch.save(rng, tmp / "rng.pt")
                write_json(tmp / "trainer_state.json", {**asdict(state), "sharded": layout or False})
                write_json(tmp / CHECKSUMS, {p.name: sha256_file(p) for p in sorted(tmp.iterdir())})

            target = self.folder / f"{PREFIX}{state.step:08d}"
            try:
                replace_dir(target, fill)
            except OSError as error:
                previous = self.complete()
                kept = f"the previous checkpoint {previous[-1].name} is intact" if previous else "no earlier checkpoint exists"
                raise CheckpointWriteError(f"could not write checkpoint {target.name} ({error.strerror or error}); {kept}") from None
            for old in self.complete()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def complete(self) -> list[Path]:
        """Checkpoint folders with a checksums file, oldest first (checksums are not verified here)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"{PREFIX}*") if (p / CHECKSUMS).is_file())

    def latest_valid(self) -> Path | None:
        """The newest checkpoint whose files all match their recorded sha256; torn ones are reported and skipped."""
        for candidate in reversed(sorted(self.folder.glob(f"{PREFIX}*")) if self.folder.is_dir() else []):
            problem = verify(candidate)
            if problem is None:
                return candidate
            if self.accelerator.is_main_process:
                print(f"peftstd: skipping checkpoint {candidate.name}: {problem}", file=sys.stderr)
        return None

    def load(self, path: Path, model, optimizer, scheduler, method) -> tuple[TrainerState, Any]:
        from safetensors.torch import load_file

        saved = json.loads((path / "trainer_state.json").read_text())
        written = saved.pop("sharded", False)
        written = "fsdp" if written is True else written or None  # True: before ZeRO layouts were recorded
        if written != (layout := sharding.layout(self.accelerator)):
            was, now = (f"sharded ({written.upper()})" if written else "unsharded", f"sharded ({layout.upper()})" if layout else "unsharded")
            raise UserError(f"checkpoint {path.name} was written by a {was} run; resume it with the same launch settings, not a {now} one")
        sharding.load_full_state(model, load_file(path / "trainable.safetensors"))
        sharding.load_optimizer_state(model, optimizer, torch.load(path / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        if self.accelerator.scaler is not None and (path / "scaler.pt").is_file():
            self.accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=False))
        method.load_state_dict(model, torch.load(path / "method.pt", weights_only=False))
        rng = torch.load(path / "rng.pt", weights_only=False)
        if len(rng) != self.accelerator.num_processes:
            raise UserError(
                f"checkpoint {path.name} was written by {len(rng)} process(es); resume it with the same number, not {self.accelerator.num_processes}"
            )
        set_rng_state(rng[self.accelerator.process_index])
        state = TrainerState(**saved)
        return state, sharding.sharded_like(torch.load(path / "best.pt", weights_only=False), model)


def checkpoint_due_by_time(minutes: float | None, last_time: float, accelerator) -> bool:
    """Whether `minutes` passed since the last checkpoint, decided by rank 0 for every process."""
    if minutes is None:
        return False
    due = time.time() - last_time >= minutes * 60
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        due = broadcast_object_list([due])[0]
    return due


def verify(path: Path) -> str | None:
    """None when every file of the checkpoint matches its checksum, else what is wrong."""
    sums_path = path / CHECKSUMS
    if not sums_path.is_file():
        return "incomplete (no checksums.json)"
    try:
        sums = json.loads(sums_path.read_text())
    except json.JSONDecodeError:
        return "checksums.json is unreadable"
    for name, expected in sums.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if sha256_file(file) != expected:
            return f"{name} does not match its sha256"
    return None
