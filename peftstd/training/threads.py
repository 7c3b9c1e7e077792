"""CPU threads of a training process, decided by the recipe rather than by how it was launched.

`accelerate launch` without `--cpu` sets OMP_NUM_THREADS=1 on a machine without a GPU (it sizes CPU threads only
when `--cpu` is given), so the README's own command trained on one core: 86.8 samples/s against 111.9 with two on
this 2-core machine, and the two runs were not bit-identical. Here every CPU process gets its share of the physical
cores (all of them for a single process), or `training.cpu_threads` when set; the count goes into the banner and the
manifest, and a rerun must use the same count to repeat a run bit for bit.
"""

from __future__ import annotations

import os


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def set_cpu_threads(requested: int | None, processes: int) -> dict:
    """Set torch's intra-op threads; what was set and why (for the manifest)."""
    import torch

    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    cores = physical_cores()
    threads = requested or max(1, cores // max(1, local))
    reason = "training.cpu_threads" if requested else f"{cores} physical cores / {local} process(es) on this machine"
    launcher = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(threads)
    return {"threads": threads, "reason": reason, "launcher_omp_num_threads": launcher}
