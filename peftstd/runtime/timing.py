"""Interleaved timing (A B C A B C ...) so that drift on a shared machine hits every backend alike."""

from __future__ import annotations

import time

import numpy as np

from peftstd.runtime.backends import Backend


def interleaved(backends: list[Backend], repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of every backend, `repeats` rounds, after `warmup` untimed rounds."""
    for _ in range(warmup):
        for backend in backends:
            backend.run()
    times: dict[str, list[float]] = {b.name: [] for b in backends}
    for _ in range(repeats):
        for backend in backends:
            started = time.perf_counter()
            backend.run()
            times[backend.name].append(time.perf_counter() - started)
    return times


def summary(seconds: list[float], batch: int, sequence: int) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    p50 = float(np.percentile(ms, 50))
    return {"p50_ms": p50, "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "samples_per_s": batch / (p50 / 1000), "tokens_per_s": batch * sequence / (p50 / 1000), "n": len(ms)}


def fixed_length_feed(tokenizer, texts: list[str], batch: int, sequence: int) -> dict[str, np.ndarray]:
    """A batch of real text, every row exactly `sequence` tokens (no padding), like a full-length request."""
    ids = [token for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for token in row]
    rows = []
    for b in range(batch):
        start = (b * (sequence - 2)) % max(1, len(ids) - sequence)
        rows.append([tokenizer.cls_token_id, *ids[start : start + sequence - 2], tokenizer.sep_token_id])
    input_ids = np.array(rows, dtype=np.int64)
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids), "token_type_ids": np.zeros_like(input_ids)}
