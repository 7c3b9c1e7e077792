"""Model loading at start-up, in a thread while the server is live: every export's predictor and batch worker, every
causal LM's generation worker, each warmed up before the server reports ready."""

from __future__ import annotations

import asyncio
import gc

import torch

from peftstd.runtime.decoders import KVBatch
from peftstd.runtime.drift import DriftWindow
from peftstd.serve.batcher import ModelWorker
from peftstd.serve.config import ServeConfig
from peftstd.serve.generation import open_language_models
from peftstd.serve.state import ServerState


async def load_models(state: ServerState) -> None:
    """Load and warm every model in a thread; the server is live meanwhile, and ready only afterwards."""
    loop = asyncio.get_running_loop()
    try:
        language = await loop.run_in_executor(None, open_language_models, state.exports, state.cfg)
        for served in language.values():
            state.language_models[served.name] = served
            reference = served.monitor
            if reference is not None:
                state.drift[served.name] = DriftWindow(reference, state.cfg.drift_window, state.cfg.drift_window_s)
            state.metrics.add_language_model(served, state.drift.get(served.name))
        for worker in state.generation_workers():
            await loop.run_in_executor(None, warm_up_generation, worker)
            worker.start()
        for name, path in state.exports.items():
            if name in language:
                continue
            predictor = await loop.run_in_executor(None, state.load, name, path)
            worker = ModelWorker(name, predictor, state.cfg.max_batch_size, state.cfg.max_batch_tokens, state.cfg.max_queue,
                                 state.cfg.max_wait_ms, state.cfg.max_padding)
            await loop.run_in_executor(None, warm_up, predictor, state.cfg)
            reference = predictor.monitor
            if reference is not None:
                state.drift[name] = DriftWindow(reference, state.cfg.drift_window, state.cfg.drift_window_s)
            elif predictor.export is not None:
                print(f"peftstd serve: {name}: no monitor.json in {path} (exported before peftstd wrote one); "
                      "no drift metrics for it (re-export to get them)", flush=True)
            state.metrics.add_model(name, worker, state.drift.get(name))
            worker.start()
            state.workers[name] = worker
        # Everything loaded so far lives as long as the server: frozen, the garbage collector no longer scans it.
        # Unfrozen, each full collection walked the ~450k objects of the libraries and models, 0.24 s with the event
        # loop stopped, twice in 15 s at concurrency 32 (measured with gc.callbacks).
        gc.collect()
        gc.freeze()
        state.ready = True
        print(f"peftstd serve: ready ({', '.join(state.exports)})", flush=True)
    except Exception as error:  # noqa: BLE001 - reported by readiness and on stderr; liveness stays up
        state.load_error = f"{type(error).__name__}: {error}"
        print(f"peftstd serve: error: loading failed: {state.load_error}", flush=True)


def warm_up_generation(worker) -> None:
    """A prefill and a few decode steps of one and of two rows, so the first requests pay no first-call costs."""
    decoder = worker.decoder
    for rows in (1, 2):
        _, past, mask = decoder.prefill([[1, 2, 3]] * rows)
        batch = KVBatch()
        batch.join(past, mask)
        for step in range(3):
            ids, positions = torch.ones(rows, 1, dtype=torch.long), torch.full((rows, 1), 3 + step, dtype=torch.long)
            mask = torch.cat([batch.mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
            _, present = decoder.forward(ids, mask, positions, batch.past, None)
            batch.grow(present)


def warm_up(predictor, cfg: ServeConfig) -> None:
    """One call per length bucket at 1 row and at a full batch, before the server is ready, so the first real
    requests pay no first-call costs (allocator growth, kernels built per shape). Buckets: powers of two up to the
    model's length, or every length a batch can take when the predictor pads to a `length_step` (OpenVINO)."""
    if predictor.generative:
        predictor.run([predictor.encode({"prompt": "hello", "max_new_tokens": 2})])
        return
    vocabulary_id = predictor.tokenizer.convert_tokens_to_ids(predictor.tokenizer.unk_token or "") or 1
    step, longest = predictor.length_step, predictor.max_length
    sizes = range(step, longest + step, step) if step > 1 else [8 << i for i in range(longest.bit_length())]
    for length in sorted({predictor.padded_length(n) for n in sizes}):
        rows = max(1, min(cfg.max_batch_size, cfg.max_batch_tokens // length))
        row = predictor.encode_ids([vocabulary_id] * length).rows[0]
        for count in sorted({1, rows}):
            predictor.forward([row] * count)
