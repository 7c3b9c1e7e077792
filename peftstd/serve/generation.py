"""Continuous (iteration-level) batching of generation: one decode batch per base model, which requests join and
leave at token boundaries (Orca, vLLM and TGI schedule this way), each row with its own KV cache, sampling
settings and adapter.

A thread owns the batch. Between two decode steps it drops rows whose client went away or that finished,
prefills waiting requests together (left-padded, within a token budget per step so that running rows keep their
pace), runs adapter loads and unloads, then runs one step for every row. Tokens reach the event loop as they are chosen, through each request's asyncio queue.

Written here rather than taken from a library: vLLM and TGI do not run on these CPUs' Python stack, and
transformers' own continuous-batching manager (4.57) takes one generation config for every request and knows
nothing of peft adapters.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from peftstd.runtime.decoders import Decoder, KVBatch
from peftstd.runtime.sampling import Sequence
from peftstd.serve.batcher import QueueFull


@dataclass
class Stream:
    """One request's generation as the event loop sees it: events ('text', piece) then ('end', finish_reason) or
    ('error', message) arrive in `events`."""

    sequence: Sequence
    loop: asyncio.AbstractEventLoop
    model_name: str = ""
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    cancelled: bool = False

    def emit(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    @property
    def adapter(self) -> str | None:
        return self.sequence.adapter


@dataclass
class GenerationStats:
    steps: int = 0
    rows: int = 0  # summed over steps: rows / steps is the mean decode batch
    largest: int = 0  # rows of the largest decode batch so far
    prefills: int = 0
    tokens: int = 0
    cancelled: int = 0
    step_seconds: float = 0.0


class GenerationWorker:
    """The decode batch of one base model, shared by every model name served from it (its adapters)."""

    def __init__(self, name: str, decoder: Decoder, max_sequences: int, max_queue: int, prefill_tokens: int = 512):
        self.name, self.decoder = name, decoder
        self.max_sequences, self.max_queue, self.prefill_tokens = max_sequences, max_queue, prefill_tokens
        self.waiting: deque[Stream] = deque()
        self.active: list[Stream] = []
        self.batch = KVBatch()
        self.commands: list = []  # (callable, adapter it waits on or None, future) run between steps
        self.condition = threading.Condition()
        self.stats = GenerationStats()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.on_token = None  # callable(stream, first: bool, seconds) for the metrics
        self.on_step = None  # callable(rows, seconds)

    # ---- called from the event loop
    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, name=f"generate-{self.name}", daemon=True)
        self.thread.start()

    async def stop(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify()
        if self.thread:
            await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 10)

    def submit(self, sequence: Sequence, model_name: str = "") -> Stream:
        stream = Stream(sequence, asyncio.get_running_loop(), model_name)
        with self.condition:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(stream)
            self.condition.notify()
        return stream

    def cancel(self, stream: Stream) -> None:
        """The client went away: the row leaves the batch at the next token boundary (or never enters it)."""
        with self.condition:
            stream.cancelled = True
            self.condition.notify()

    def call(self, function, adapter: str | None = None) -> asyncio.Future:
        """Run `function()` in the worker's thread between two steps, once no waiting or running row uses
        `adapter` (an unload waits for that adapter's requests to finish); the future gets its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.condition:
            self.commands.append((function, adapter, loop, future))
            self.condition.notify()
        return future

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def running(self) -> int:
        return len(self.active)

    def idle(self) -> bool:
        return not self.waiting and not self.active

    # ---- the worker's thread
    def loop(self) -> None:
        while True:
            with self.condition:
                while not (self.stopping or self.waiting or self.active or self.commands):
                    self.condition.wait()
                if self.stopping:
                    for stream in [*self.waiting, *self.active]:
                        stream.emit("error", "the server is shutting down")
                    return
                commands = self.runnable_commands()
                admitted = self.admit()
            for function, _, loop, future in commands:
                try:
                    result = function()
                except Exception as error:  # noqa: BLE001 - handed to the caller, which turns it into a refusal
                    loop.call_soon_threadsafe(settle, future, None, error)
                else:
                    loop.call_soon_threadsafe(settle, future, result, None)
            if admitted:
                self.prefill(admitted)
            self.drop_finished()
            if self.active:
                self.step()
                self.drop_finished()

    def runnable_commands(self) -> list:
        busy = {s.adapter for s in [*self.waiting, *self.active] if not s.cancelled}
        ready = [c for c in self.commands if c[1] is None or c[1] not in busy]
        self.commands = [c for c in self.commands if c not in ready]
        return ready

    def admit(self) -> list[Stream]:
        """The oldest waiting requests, while rows are free and their prompts, padded to the longest, fit this step's
        prefill budget (the first always goes in)."""
        admitted, width = [], 0
        while self.waiting and len(self.active) + len(admitted) < self.max_sequences:
            stream = self.waiting[0]
            if stream.cancelled:
                self.waiting.popleft()
                self.stats.cancelled += 1
                continue
            longest = max(width, len(stream.sequence.prompt))
            if admitted and (len(admitted) + 1) * longest > self.prefill_tokens:
                break
            admitted.append(self.waiting.popleft())
            width = longest
        return admitted

    def prefill(self, streams: list[Stream]) -> None:
        """The admitted prompts in one forward; each row's first token, and the unfinished rows join the batch."""
        sequences = [s.sequence for s in streams]
        try:
            logits, past, mask = self.decoder.prefill([s.prompt for s in sequences], [s.adapter for s in sequences])
        except Exception as error:  # noqa: BLE001 - a model failure answers its requests; the batch lives on
            for stream in streams:
                stream.emit("error", f"generation failed ({type(error).__name__}: {error})")
            return
        self.stats.prefills += len(streams)
        for stream, row in zip(streams, logits):
            self.deliver(stream, stream.sequence.choose(row))
        keep = [i for i, s in enumerate(streams) if not s.sequence.finished]
        if keep:
            index = torch.tensor(keep, dtype=torch.long)
            self.batch.join([(k.index_select(0, index), v.index_select(0, index)) for k, v in past], mask.index_select(0, index))
            self.active.extend(streams[i] for i in keep)

    def step(self) -> None:
        rows = self.active
        last = torch.tensor([[s.sequence.tokens[-1]] for s in rows], dtype=torch.long)
        positions = torch.tensor([[len(s.sequence.prompt) + len(s.sequence.tokens) - 1] for s in rows], dtype=torch.long)
        mask = torch.cat([self.batch.mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        adapters = [s.adapter for s in rows] if self.decoder.adapters else None
        started = time.perf_counter()
        try:
            logits, present = self.decoder.forward(last, mask, positions, self.batch.past, adapters)
        except Exception as error:  # noqa: BLE001
            for stream in rows:
                stream.emit("error", f"generation failed ({type(error).__name__}: {error})")
            self.active, self.batch = [], KVBatch()
            return
        seconds = time.perf_counter() - started
        self.batch.grow(present)
        self.stats.steps += 1
        self.stats.rows += len(rows)
        self.stats.largest = max(self.stats.largest, len(rows))
        self.stats.step_seconds += seconds
        if self.on_step:
            self.on_step(len(rows), seconds)
        for stream, row in zip(rows, logits):
            if not stream.cancelled:
                self.deliver(stream, stream.sequence.choose(row))

    def deliver(self, stream: Stream, token: int) -> None:
        sequence, now = stream.sequence, time.monotonic()
        piece = sequence.add(token)
        first = stream.first_token is None
        if self.on_token:
            self.on_token(stream, first, now - (stream.arrived if first else stream.last_token))
        if first:
            stream.first_token = now
        stream.last_token = now
        self.stats.tokens += 1
        if piece:
            stream.emit("text", piece)
        if sequence.finished:
            stream.emit("end", sequence.finish_reason)

    def drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self.active) if not (s.cancelled or s.sequence.finished)]
        if len(keep) == len(self.active):
            return
        self.stats.cancelled += sum(s.cancelled and not s.sequence.finished for s in self.active)
        self.active = [self.active[i] for i in keep]
        if keep:
            self.batch.keep(keep)
        else:
            self.batch = KVBatch()


def settle(future: asyncio.Future, result, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass
class ServedLanguageModel:
    """A model name served by a generation worker: its language model and the adapter its rows use (None: the base,
    or a merged export)."""

    name: str
    worker: GenerationWorker
    model: object  # runtime.language_model.LanguageModel
    adapter: str | None = None
    path: str = ""

    @property
    def monitor(self):
        """The export's drift reference (monitor.json), None for an adapter run or an export without one."""
        from peftstd.runtime.folders import ExportFolder

        return ExportFolder(self.path).monitor if self.adapter is None and ExportFolder.holds(self.path) else None

    def describe(self) -> dict:
        stats = self.worker.stats
        return {**self.model.info, "adapter": self.adapter, "max_length": self.model.window,
                "batching": "continuous (iteration-level)", "running_sequences": self.worker.running,
                "waiting_requests": self.worker.queued, "decode_steps": stats.steps,
                "mean_decode_batch": stats.rows / stats.steps if stats.steps else 0.0,
                "largest_decode_batch": stats.largest, "generated_tokens": stats.tokens,
                "cancelled": stats.cancelled}


def open_language_models(exports: dict, cfg) -> dict[str, ServedLanguageModel]:
    """The served names that generate token by token: causal-LM exports (one worker each, their gated ONNX decoder)
    and LoRA runs (one worker and one PyTorch base for all of them, each run an adapter)."""
    from pathlib import Path

    from peftstd.runtime.folders import ExportFolder, RunFolder
    from peftstd.runtime.language_model import export_language_model, runs_language_model

    served, runs = {}, {}
    for name, path in exports.items():
        if ExportFolder.holds(path):
            export = ExportFolder(path)
            if export.task == "causal-lm" and export.kv_cache:
                model = export_language_model(export, cfg.artifact, cfg.threads, spinning=False)
                worker = GenerationWorker(name, model.decoder, cfg.max_sequences, cfg.max_queue, cfg.prefill_tokens)
                served[name] = ServedLanguageModel(name, worker, model, None, str(Path(path)))
        elif RunFolder.holds(path) and (run := RunFolder(path)).task == "causal-lm":
            runs[name] = run
    if runs:
        model = runs_language_model(runs, cfg.threads)
        worker = GenerationWorker("adapters", model.decoder, cfg.max_sequences, cfg.max_queue, cfg.prefill_tokens)
        for name, run in runs.items():
            served[name] = ServedLanguageModel(name, worker, model, name, str(run.path))
    return served
