"""A GGUF file run by llama.cpp (through llama-cpp-python, which builds llama.cpp from source at install): load it,
score token ids teacher-forced, decode greedily. The export gate, `peftstd check` and `peftstd predict` all use
these, so what was gated is what runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from peftstd.errors import UserError

# the file `auto` picks, first that passed: Q8_0 (within 1% and the fastest in bench/results/gguf_export.md), the smaller
# quantized types, then the float ones
GGUF_ORDER = tuple(f"gguf-{kind}" for kind in ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q5_0", "q4_0", "f16", "bf16", "f32"))
INSTALL_HINT = "pip install 'peftstd[gguf]' (builds llama.cpp from the llama-cpp-python sdist)"


def llama_cpp():
    """The llama_cpp module, or a one-line error saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"GGUF artifacts run on llama.cpp, which is not installed: {INSTALL_HINT}") from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's loader and quantizer print every tensor
    return llama_cpp


def open_gguf(path: Path, context: int, threads: int | None = None, all_logits: bool = False):
    """`path` in llama.cpp with room for `context` tokens; `all_logits` keeps every position's logits (scoring)."""
    llama = llama_cpp().Llama
    threads = threads or os.cpu_count() or 1
    return llama(model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context, logits_all=all_logits,
                 n_threads=threads, n_threads_batch=threads, verbose=False)


def sequence_nll(model, ids: list[int], labels: list[int], ignore: int) -> tuple[float, int]:
    """Summed negative log-likelihood of the labelled tokens of `ids` and how many there were: position t predicts
    token t + 1, as in training (`model` opened with `all_logits`)."""
    model.reset()
    model.eval(ids)
    logits = np.asarray(model.scores[: len(ids) - 1], dtype=np.float64)
    targets = np.asarray(labels[1:])
    scored = targets != ignore
    if not scored.any():
        return 0.0, 0
    logits, targets = logits[scored], targets[scored]
    top = logits.max(axis=1, keepdims=True)
    log_normaliser = (top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))
    return float((log_normaliser - logits[np.arange(len(targets)), targets]).sum()), int(scored.sum())


def greedy(model, ids: list[int], max_new_tokens: int, end_ids: frozenset[int]) -> list[int]:
    """Greedy decoding of `ids` (the argmax at every step, no penalties), ending at an end-of-turn token."""
    new: list[int] = []
    for token in model.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        new.append(int(token))
        if token in end_ids or len(new) >= max_new_tokens:
            break
    return new
