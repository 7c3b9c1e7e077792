"""Model-FLOPs utilization: the FLOPs a training run did per second, against this machine's measured matmul peak.

FLOPs are counted, not estimated: torch's `FlopCounterMode` counts every matmul-like op of one real forward and
backward pass (a LoRA run's frozen base computes gradients of activations but not of its weights, and the counter
sees exactly that; the CPU attention kernels, which it does not know, get its formulas for the GPU ones). The count
of the first batch, per padded token, scales to the tokens of the whole run; the
attention term, quadratic in length, is a few percent of the total at the lengths these recipes train on.
The peak is the best of a few timed square matmuls at the run's dtype and thread count, cached per machine.
"""

from __future__ import annotations

import json
import time

import torch

from peftstd.errors import UserError

PEAK_SIZE = 1024  # matmul side for the peak: large enough to run at full speed, small enough to time in a second


def cpu_attention_formulas() -> dict:
    """Formulas for the CPU kernels of scaled-dot-product attention, which torch's counter knows only for its GPU
    kernels (the math is the same: the GPU kernels' counts, from the same shapes)."""
    from torch.utils import flop_counter

    aten = torch.ops.aten

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return {aten._scaled_dot_product_flash_attention_for_cpu: forward, aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def count_flops(run) -> int:
    """Matmul FLOPs of `run()` (which runs a forward, and a backward if it calls one), with the RNG states left as
    they were, so that counting changes nothing in the run that follows."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention_formulas())
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))), counter:
        run()
    return int(counter.get_total_flops())


def training_flops_per_token(model, batch: dict, loss_of) -> float:
    """FLOPs of one training step (forward and backward) on `batch`, per padded token, counted in training mode (the
    work a step does: a classifier's last layer may run on its pooled token alone); the gradients it leaves are
    cleared and the model's mode restored."""
    was_training = model.training
    model.train()
    try:
        flops = count_flops(lambda: loss_of(model, batch).backward())
    finally:
        model.train(was_training)
    model.zero_grad(set_to_none=True)
    return flops / batch["input_ids"].numel()


def matmul_peak(dtype: torch.dtype, threads: int, device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` square matmuls of `dtype` on `device` (CPU: at `threads` threads), cached
    in peftstd's cache folder per processor, thread count and dtype."""
    from peftstd.basics.atomic import write_json
    from peftstd.basics.hardware import hardware
    from peftstd.data.cache import cache_dir

    device = torch.device(device)
    processor = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{hardware()['cpu']}|threads={threads}"
    key = f"{processor}|{str(dtype).removeprefix('torch.')}|n={PEAK_SIZE}"
    path = cache_dir() / "matmul_peak.json"
    try:
        cached = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return cached[key]
    with torch.random.fork_rng(devices=[]):
        a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b)  # warm-up: kernels chosen, memory touched
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - started)
    peak = 2 * PEAK_SIZE**3 / best
    cached[key] = peak
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cached)  # atomic: sweep workers may measure at once
    except OSError as error:
        raise UserError(f"cannot write the matmul peak cache {str(path)!r}: {error}") from None
    return peak


def utilization(flops_per_token: float, tokens: int, seconds: float, peak: float) -> dict:
    achieved = flops_per_token * tokens / seconds if seconds else 0.0
    return {"flops_per_token": flops_per_token, "tokens": tokens, "total_flops": flops_per_token * tokens,
            "achieved_flops_per_s": achieved, "peak_flops_per_s": peak, "mfu": achieved / peak if peak else 0.0}
