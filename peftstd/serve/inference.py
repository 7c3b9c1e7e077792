"""The path from an accepted request to its answer, shared by every protocol's routes: input limits, tokenization
off the event loop, queueing for a batch with the deadline and the client watched, and generation through a causal
LM's continuous batch."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from peftstd.errors import UserError
from peftstd.runtime.predictors import Encoded
from peftstd.runtime.sampling import Sampling, Sequence
from peftstd.serve.batcher import DeadlineExceeded, ModelWorker, QueueFull
from peftstd.serve.config import ServeConfig
from peftstd.serve.state import HTTPError, ServerState, log_entry

INLINE_TOKENIZE_CHARS = 1000  # request bodies up to this size are tokenized on the event loop (see `encode`)


def check_inputs(state: ServerState, values: list) -> None:
    if not values:
        raise state.reject("input", 422, "inputs is empty; send at least one input")
    if len(values) > state.cfg.max_inputs:
        raise state.reject("input", 422, f"{len(values)} inputs exceed the limit of {state.cfg.max_inputs} per request")
    for i, value in enumerate(values):
        texts = [value] if isinstance(value, str) else [v for v in value.values() if isinstance(v, str)] if isinstance(value, dict) else []
        for text in texts:
            if len(text) > state.cfg.max_chars:
                raise state.reject("input", 422, f"inputs[{i}] has {len(text)} characters; the limit is {state.cfg.max_chars}")

async def encode(state: ServerState, request: Request, model: ModelWorker, make, chars: int) -> list[Encoded]:
    """Tokenize in the pool, off the event loop; a request of a few short texts is tokenized in place, since
    handing it to a thread and back costs more than the 0.1 ms its tokenization takes (measured)."""
    started = time.perf_counter()
    try:
        if chars <= INLINE_TOKENIZE_CHARS:
            return make()
        return await asyncio.get_running_loop().run_in_executor(state.pool, make)
    except UserError as error:  # InputError, or the task's own data checks (a question too long for the window)
        raise state.reject("input", 422, str(error)) from None
    finally:
        seconds = time.perf_counter() - started
        state.metrics.tokenize_seconds.labels(model.name).observe(seconds)
        log_entry(request)["tokenize_ms"] = round(seconds * 1000, 3)

async def infer(state: ServerState, request: Request, model: ModelWorker, items: list[Encoded]) -> list[dict]:
    """Queue the inputs and wait for their results, the deadline, or the client going away."""
    started = time.monotonic()
    deadline = started + state.cfg.deadline_ms / 1000
    try:
        futures = model.submit(items, deadline)
    except QueueFull:
        raise state.reject("queue", 503, f"model {model.name!r} has {model.queued_rows} rows queued (limit {state.cfg.max_queue})",
                           {"Retry-After": "1"}) from None
    results = asyncio.gather(*futures)
    gone = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({results, gone}, timeout=max(0.0, deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if results not in done:
        results.cancel()  # the worker drops cancelled inputs before they reach the model
        if gone in done:
            raise state.reject("disconnected", 499, "client closed the request")
        raise state.reject("deadline", 504, f"no answer within the deadline of {state.cfg.deadline_ms} ms")
    try:
        outputs = results.result()
    except DeadlineExceeded:
        raise state.reject("deadline", 504, f"no answer within the deadline of {state.cfg.deadline_ms} ms") from None
    entry = log_entry(request)
    entry["wait_ms"], entry["outputs"] = round((time.monotonic() - started) * 1000, 3), outputs
    state.observe(model, items, outputs)
    return outputs

# ---- our JSON API
async def generate(state: ServerState, request: Request, name: str, values: list) -> list[dict]:
    served = state.language_models[name]
    sequences = []
    for i, value in enumerate(values):
        try:
            prompt, wanted = prompt_request(value, state.cfg)
        except UserError as error:
            raise state.reject("input", 422, f"inputs[{i}]: {error}") from None
        ids = served.model.chat_ids([{"role": "user", "content": prompt}])
        if len(ids) + wanted > served.model.window:
            raise state.reject("input", 422, f"inputs[{i}] has {len(ids)} prompt tokens; with max_new_tokens {wanted} that "
                               f"exceeds the model's {served.model.window}")
        sequences.append(Sequence(ids, Sampling(wanted, temperature=0), served.model.tokenizer, served.model.end_ids, served.adapter))
    try:
        streams = [served.worker.submit(s, name) for s in sequences]
    except QueueFull:
        raise state.reject("queue", 503, f"model {name!r} has {served.worker.queued} requests waiting (limit {state.cfg.max_queue})",
                           {"Retry-After": "1"}) from None
    finished = asyncio.gather(*(ended(s) for s in streams))
    gone = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({finished, gone}, timeout=state.cfg.deadline_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if finished not in done:
        for stream in streams:
            served.worker.cancel(stream)
        finished.cancel()
        if gone in done:
            raise state.reject("disconnected", 499, "client closed the request")
        raise state.reject("deadline", 504, f"no answer within the deadline of {state.cfg.deadline_ms} ms")
    outputs = [{"text": s.sequence.text.strip(), "tokens": len(s.sequence.tokens), "finish_reason": s.sequence.finish_reason}
               for s in streams]
    log_entry(request)["outputs"] = outputs
    return outputs


async def disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so only that can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def prompt_request(value, cfg: ServeConfig) -> tuple[str, int]:
    """(prompt, max_new_tokens) of one /v1 predict or V2 input of a causal LM."""
    from peftstd.runtime.predictors import InputError, text_of

    prompt = text_of(value, "prompt")
    wanted = value.get("max_new_tokens", cfg.max_new_tokens) if isinstance(value, dict) else cfg.max_new_tokens
    if isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= cfg.max_new_tokens_limit:
        raise InputError(f"max_new_tokens must be an integer from 1 to {cfg.max_new_tokens_limit}, got {wanted!r}")
    return prompt, wanted


async def ended(stream) -> None:
    """Waits for a generation stream's end; its text is on its sequence."""
    while True:
        kind, value = await stream.events.get()
        if kind == "end":
            return
        if kind == "error":
            raise HTTPError(503, value, {"Retry-After": "1"})
