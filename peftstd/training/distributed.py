"""Check that a multi-process launch really gave the processes it asked for."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from peftstd.errors import UserError


def check_world_size(actual: int) -> None:
    """Fail when the launcher asked for N processes but this one joined a group of another size."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if actual != expected:
        raise UserError(
            f"the launcher started {expected} processes but each sees a world of {actual}; "
            "on CPU use `accelerate launch --multi_gpu --num_processes N` or torchrun (`--cpu` runs one process)"
        )


def on_main_then_broadcast(accelerator, decide: Callable[[], Any]) -> Any:
    """Run `decide` on rank 0 only and give its result (or its `UserError`) to every rank."""
    from accelerate.utils import broadcast_object_list

    outcome: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            outcome = [("ok", decide())]
        except UserError as error:
            outcome = [("error", error)]
    if accelerator.num_processes > 1:
        outcome = broadcast_object_list(outcome)
    status, value = outcome[0]
    if status == "error":
        raise value
    return value
