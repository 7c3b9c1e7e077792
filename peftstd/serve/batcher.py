"""Dynamic batching for text: one worker per model forms batches from its queue by length under a token budget.

Requests arrive tokenized (tokenization runs on arrival, in a thread pool, off the event loop). When the model
is free, the worker takes the oldest waiting input (so nothing starves) and fills the batch with the waiting
inputs nearest to it in length, while the batch stays within `max_batch_size` rows and `max_batch_tokens`
padded tokens (rows x the longest row): short requests do not pay for a long one's padding. `max_wait_ms`
(default 0) lets a batch wait for more. Inputs whose deadline passed or whose client went away are dropped
before they reach the model. The model runs in threads of its own, so the event loop keeps accepting; with
several engine streams, as many batches run at once, and one more batch per stream waits behind them, so that a
stream starts its next batch the moment it ends one (as text-embeddings-inference prefetches its next batch):
otherwise each stream idled 2.5 ms (median) between batches at concurrency 32, until the event loop had answered
the finished batch's requests and planned the next (sentiment export, 2 cores).

Written here rather than taken from a serving library: Triton batches only requests of one shape, and
LitServe/BentoML/Ray Serve batch by count alone, with no token budget and no length grouping.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from peftstd.runtime.predictors import Encoded, Predictor


class QueueFull(Exception):
    """The model's queue holds `max_queue` rows already."""


class DeadlineExceeded(Exception):
    """The input waited past its request's deadline and was dropped before the model."""


@dataclass
class Pending:
    item: Encoded
    future: asyncio.Future
    deadline: float  # time.monotonic()
    arrived: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return len(self.item.rows)


@dataclass
class BatchStats:
    """What the worker has done, for /v1/models and the metrics."""

    batches: int = 0
    rows: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    dropped_deadline: int = 0
    dropped_disconnected: int = 0
    last_batch_rows: int = 0
    model_seconds: float = 0.0


def plan_batch(queue: list[Pending], max_rows: int, max_tokens: int, max_padding: float = 1.0) -> list[Pending]:
    """The oldest input, then the waiting inputs nearest to it in length, within both budgets and while padding
    stays within `max_padding` of the batch's tokens (the rest wait for the next call, which comes as soon as this
    one ends: a second call of similar lengths costs less than padding every row to the longest). The oldest goes
    in even when it alone exceeds the token budget (a long QA context): it must be served some time."""
    oldest = queue[0]
    chosen, rows, longest = [oldest], oldest.rows, oldest.item.length
    real = oldest.item.real_tokens
    for pending in sorted(queue[1:], key=lambda p: abs(p.item.length - oldest.item.length)):
        new_rows, new_longest = rows + pending.rows, max(longest, pending.item.length)
        new_real = real + pending.item.real_tokens
        if new_rows > max_rows or new_rows * new_longest > max_tokens:
            continue
        if 1 - new_real / (new_rows * new_longest) > max_padding:
            break  # the rest are further from the oldest's length still
        chosen.append(pending)
        rows, longest, real = new_rows, new_longest, new_real
        if rows == max_rows:
            break
    return chosen


class ModelWorker:
    """The queue of one model and the batches it runs: up to `predictor.streams` at once, each in its own thread,
    and as many planned behind them."""

    def __init__(self, name: str, predictor: Predictor, max_batch_size: int, max_batch_tokens: int, max_queue: int,
                 max_wait_ms: float = 0.0, max_padding: float = 1.0):
        self.name, self.predictor = name, predictor
        self.max_batch_size, self.max_batch_tokens, self.max_queue = max_batch_size, max_batch_tokens, max_queue
        self.max_wait = max_wait_ms / 1000
        self.max_padding = max_padding
        self.queue: list[Pending] = []
        self.streams = predictor.streams
        self.running: set[asyncio.Task] = set()
        self.stats = BatchStats()
        self.executor = ThreadPoolExecutor(self.streams, thread_name_prefix=f"model-{name}")
        self.wakeup: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.on_batch = None  # callable(rows, padded_tokens, real_tokens, seconds, queue waits), set by the metrics

    @property
    def queued_rows(self) -> int:
        return sum(p.rows for p in self.queue)

    def start(self) -> None:
        self.wakeup = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, *self.running, return_exceptions=True)
        self.executor.shutdown(wait=True)

    def submit(self, items: list[Encoded], deadline: float) -> list[asyncio.Future]:
        """Queue a request's inputs; all or none, so a request is never half-accepted."""
        rows = sum(len(i.rows) for i in items)
        if self.queued_rows + rows > self.max_queue:
            raise QueueFull
        loop = asyncio.get_running_loop()
        pending = [Pending(item, loop.create_future(), deadline) for item in items]
        self.queue.extend(pending)
        self.wakeup.set()
        return [p.future for p in pending]

    def idle(self) -> bool:
        return not self.queue and not self.running

    def drop_stale(self) -> None:
        """Answer and remove inputs whose deadline passed or whose request was cancelled (client gone)."""
        now, kept = time.monotonic(), []
        for pending in self.queue:
            if pending.future.done():  # cancelled: the client disconnected or the request already failed
                self.stats.dropped_disconnected += 1
            elif now > pending.deadline:
                pending.future.set_exception(DeadlineExceeded())
                self.stats.dropped_deadline += 1
            else:
                kept.append(pending)
        self.queue = kept

    async def loop(self) -> None:
        """Plan a batch whenever fewer than two per stream are running or waiting for a stream, and inputs wait."""
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while len(self.running) < 2 * self.streams:
                self.drop_stale()
                if not self.queue:
                    break
                if self.max_wait and self.queued_rows < self.max_batch_size:
                    await asyncio.sleep(self.max_wait)
                    self.drop_stale()
                    if not self.queue:
                        break
                batch = plan_batch(self.queue, self.max_batch_size, self.max_batch_tokens, self.max_padding)
                taken = {id(p) for p in batch}
                self.queue = [p for p in self.queue if id(p) not in taken]
                task = asyncio.get_running_loop().create_task(self.run(batch))
                self.running.add(task)

    def compute(self, batch: list[Pending]) -> tuple[list[dict], float, list[float]]:
        """In a model thread: the results, the model's seconds and each input's wait, timed from when a stream took
        the batch (a planned batch may wait behind a running one)."""
        waits = [time.monotonic() - p.arrived for p in batch]
        started = time.perf_counter()
        results = self.predictor.run([p.item for p in batch])
        return results, time.perf_counter() - started, waits

    async def run(self, batch: list[Pending]) -> None:
        try:
            results, seconds, waits = await asyncio.get_running_loop().run_in_executor(self.executor, self.compute, batch)
        except Exception as error:  # noqa: BLE001 - a model failure answers its requests, the worker lives on
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        finally:
            self.running.discard(asyncio.current_task())
            self.wakeup.set()
        self.record(batch, seconds, waits)
        for pending, result in zip(batch, results):
            if not pending.future.done():
                pending.future.set_result(result)

    def record(self, batch: list[Pending], seconds: float, waits: list[float]) -> None:
        rows = sum(p.rows for p in batch)
        padded = rows * max(p.item.length for p in batch)
        real = sum(p.item.real_tokens for p in batch)
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.padded_tokens += padded
        self.stats.real_tokens += real
        self.stats.last_batch_rows = rows
        self.stats.model_seconds += seconds
        if self.on_batch:
            self.on_batch(rows, padded, real, seconds, waits)
