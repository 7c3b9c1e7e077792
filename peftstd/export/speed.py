"""The export's own speed check: p50 latency of every artifact against the PyTorch model it came from,
interleaved, at sequence 128 (or the run's max length), for the export card. `peftstd bench` gives the
full grid with percentiles; this is the short version that every export carries."""

from __future__ import annotations

from pathlib import Path


def speed_check(model, tokenizer, texts: list[str], artifacts: dict[str, Path], max_length: int,
                disabled_optimizers: list[str], batches=(1, 8), repeats: int = 10) -> dict:
    import torch

    from peftstd.runtime.backends import engine_backend, timing_engine, torch_backend
    from peftstd.runtime.engines import runtime_of
    from peftstd.runtime.timing import fixed_length_feed, interleaved, summary

    sequence, threads = min(128, max_length), torch.get_num_threads()
    engines = {name: timing_engine(path, runtime_of(path), threads, disabled_optimizers) for name, path in artifacts.items()}
    rows = []
    for batch in batches:
        feed = fixed_length_feed(tokenizer, texts, batch, sequence)
        backends = [torch_backend("pytorch-fp32", model, feed)]
        backends += [engine_backend(name, path, feed, threads, engine=engines[name]) for name, path in artifacts.items()]
        times = interleaved(backends, repeats, warmup=2)
        baseline = summary(times["pytorch-fp32"], batch, sequence)["p50_ms"]
        for backend in backends:
            p50 = summary(times[backend.name], batch, sequence)["p50_ms"]
            rows.append({"backend": backend.name, "batch": batch, "p50_ms": p50, "speedup_vs_pytorch_fp32": baseline / p50})
    return {"sequence": sequence, "threads": threads, "repeats": repeats, "rows": rows}
