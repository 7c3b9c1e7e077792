"""Check that a multi-process launch really gave the processes it asked for."""

from __future__ import annotations

import os

from peftstd.errors import UserError


def check_world_size(actual: int) -> None:
    """Fail when the launcher asked for N processes but this one joined a group of another size."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if actual != expected:
        raise UserError(
            f"the launcher started {expected} processes but each sees a world of {actual}; "
            "on CPU use `accelerate launch --multi_gpu --num_processes N` or torchrun (`--cpu` runs one process)"
        )
