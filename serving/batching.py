"""Adaptive batching: concurrent requests become one model call, and each caller gets its own rows back.

Requests queue while the model is busy; the next call takes every queued request whose tensors fit
together (same input names, dtypes and trailing shapes), up to `max_batch_size` rows, concatenated
along the first dimension. With `max_wait_ms` > 0 a call that is not full first waits that long for
more. A single request larger than `max_batch_size` still runs, alone.

`predict` runs on the given executor (one thread for the model); this class is pure asyncio + numpy.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


@dataclass
class _Item:
    inputs: Tensors
    rows: int
    key: tuple
    future: asyncio.Future


@dataclass
class BatchStats:
    """Counters for logs and tests: how many requests ran in how many model calls."""

    requests: int = 0
    calls: int = 0
    rows: int = 0
    largest: int = 0  # most requests in one call
    sizes: dict[int, int] = field(default_factory=dict)  # requests per call -> how many calls


class Batcher:
    def __init__(self, predict: Callable[[Tensors], Tensors], executor: Executor | None, *,
                 max_batch_size: int = 256, max_wait_ms: float = 0.0, enabled: bool = True):
        self._predict = predict
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled  # False: every request is its own call (a model without a free batch dim)
        self.stats = BatchStats()
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def predict(self, inputs: Tensors) -> Tensors:
        """Run `inputs` (every array with the same first dimension) through the model, batched with others."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run_forever())
        rows = len(next(iter(inputs.values()))) if inputs else 0
        key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items())) if self.enabled else None
        item = _Item(inputs, rows, key if key is not None else object(), asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()

    async def _run_forever(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take()
            if self.max_wait and sum(item.rows for item in batch) < self.max_batch_size:
                batch = await self._wait_for_more(batch)
            try:
                await self._run(batch)
            except Exception:  # never let the worker die; _run already answered every caller
                log.exception("batch worker error")

    def _take(self, batch: list[_Item] | None = None) -> list[_Item]:
        """Move the first queued request, and every later one that fits with it, into a batch."""
        batch = batch if batch is not None else [self._pending.popleft()]
        rows = sum(item.rows for item in batch)
        key = batch[0].key
        keep: deque[_Item] = deque()
        while self._pending:
            item = self._pending.popleft()
            if item.key == key and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                keep.append(item)
        self._pending = keep
        return batch

    async def _wait_for_more(self, batch: list[_Item]) -> list[_Item]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while sum(item.rows for item in batch) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
            batch = self._take(batch)
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        batch = [item for item in batch if not item.future.done()]  # callers that gave up
        if not batch:
            return
        self._count(batch)
        if len(batch) == 1:
            await self._run_one(batch[0])
            return
        names = list(batch[0].inputs)
        joined = {name: np.concatenate([item.inputs[name] for item in batch]) for name in names}
        total = sum(item.rows for item in batch)
        try:
            outputs = await self._call(joined)
            if any(len(array) != total for array in outputs.values()):
                raise ValueError("an output does not have one row per input row")
        except Exception:
            # One bad request must not fail the others: run each alone and let it get its own answer.
            for item in batch:
                await self._run_one(item)
            return
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():
                item.future.set_result({name: array[start:end] for name, array in outputs.items()})
            start = end

    async def _run_one(self, item: _Item) -> None:
        try:
            result = await self._call(item.inputs)
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(result)

    async def _call(self, inputs: Tensors) -> Tensors:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, inputs)

    def _count(self, batch: list[_Item]) -> None:
        stats = self.stats
        stats.calls += 1
        stats.requests += len(batch)
        stats.rows += sum(item.rows for item in batch)
        stats.largest = max(stats.largest, len(batch))
        stats.sizes[len(batch)] = stats.sizes.get(len(batch), 0) + 1
