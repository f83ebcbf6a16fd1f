"""Adaptive batching: concurrent requests become one model call, and each caller gets its own rows back.

The model runs on one dedicated thread. Requests queue while it is busy; its next call takes every
queued request whose tensors fit together (same input names, dtypes and trailing shapes), up to
`max_batch_size` rows, concatenated along the first dimension. A single request larger than
`max_batch_size` runs alone.

Waiting is adaptive. A model call costs about the same for 1 row as for 32, so under concurrent load it
pays to wait a little for more requests before calling the model; a sequential caller, though, would only
lose that time. The estimate of how many callers there are is the largest call among the last 4 calls: a
call starts as soon as it holds that many requests, or `max_batch_size` rows, or when `max_wait_ms` has
passed since the model thread became free for it, whichever comes first. A call whose wait ran out holding
fewer requests than expected means callers went away, so the estimate drops to what it got. Sequential
callers never wait (every call held one request, so the estimate is 1); once load stops at most one call
waits in vain.

The model thread is woken at most once per call while it waits: the event loop counts arrivals (and rows) as
it queues requests and sets one `threading.Event` only when the count the waiting call asked for is reached.
Waking for every arrival instead would take the GIL from the event loop once per request, which costs more
CPU than the batching saves.

Hand-offs are cheap on purpose: the event loop puts a request on a queue (no task, no executor future),
and the model thread answers a whole batch with one `call_soon_threadsafe`.

An `observe` callback sees every successful model call after its callers were answered: the callers'
tags (whatever each passed to `predict`), the joined inputs and outputs, and each caller's row count.
The prediction log hangs off it, so logging costs one call per batch rather than one per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
Observer = Callable[[list, Tensors, Tensors, list[int]], None]  # (tags, inputs, outputs, rows per caller)
_STOP = object()
_NEVER = 1 << 62  # an arrival count the event loop never reaches: nobody waits
RECENT_CALLS = 4  # how many calls the estimate of concurrent callers looks back on


@dataclass(slots=True)
class _Item:
    inputs: Tensors
    rows: int
    key: object
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    tag: object
    started: float  # time.perf_counter() when the request arrived


@dataclass
class BatchStats:
    """Counters for logs, statistics and tests: how many requests ran in how many model calls, and how long
    they took. Written by the model thread only (readers may see one call's counters a moment apart)."""

    requests: int = 0
    calls: int = 0
    rows: int = 0
    largest: int = 0  # most requests in one call
    sizes: dict[int, int] = field(default_factory=dict)  # requests per call -> how many calls
    compute_seconds: float = 0.0  # time inside the model, summed over calls
    request_compute_seconds: float = 0.0  # each call's time counted once per request in it (Triton's compute_infer)
    queue_seconds: float = 0.0  # per request: from its arrival to the start of its model call
    succeeded: int = 0  # requests answered with outputs
    succeeded_seconds: float = 0.0  # per answered request: from its arrival to the end of its model call
    failed: int = 0  # requests the model failed on
    failed_seconds: float = 0.0
    waits_expired: int = 0  # calls that waited the whole max_wait for callers that did not come


class Batcher:
    def __init__(self, predict: Callable[[Tensors], Tensors], *, max_batch_size: int = 256,
                 max_wait_ms: float = 0.0, enabled: bool = True, observe: Observer | None = None):
        self._predict = predict
        self._observe = observe
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled  # False: every request is its own call (a model without a free batch dim)
        self.stats = BatchStats()
        # Requests in each recent model call; the largest is how many callers a waiting call expects. One at
        # first: a sequential caller never waits, and concurrent ones show up in the second call.
        self._recent: deque[int] = deque([1], maxlen=RECENT_CALLS)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._held: list[_Item] = []  # taken from the queue but not fitting the last batch (model thread only)
        # Arrivals and their rows so far, counted by the event loop as it queues; when either reaches what the
        # waiting model thread asked for (`_wake_at`, `_wake_rows`), the loop sets `_ready`, once.
        self._arrived = 0
        self._arrived_rows = 0
        self._wake_at = _NEVER
        self._wake_rows = _NEVER
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run_forever, name="model", daemon=True)
        self._thread.start()

    async def predict(self, inputs: Tensors, tag: object = None, started: float | None = None) -> Tensors:
        """Run `inputs` (every array with the same first dimension) through the model, batched with others.
        `tag` is handed to the observer with this request's rows; `started` (time.perf_counter() at the
        request's arrival, now when None) is where its queue and total times count from."""
        loop = asyncio.get_running_loop()
        if len(inputs) == 1:  # the common case, without a generator
            ((name, first),) = inputs.items()
            key = (name, first.dtype, first.shape[1:])
        else:
            first = next(iter(inputs.values()), None)
            key = tuple((name, a.dtype, a.shape[1:]) for name, a in inputs.items())
        rows = first.shape[0] if first is not None and first.ndim else 1
        if not self.enabled:
            key = object()  # fits with nothing: every request is its own call
        item = _Item(inputs, rows, key, loop.create_future(), loop, tag,
                     time.perf_counter() if started is None else started)
        self._queue.put(item)
        # Count after the put, so that a woken model thread finds the item queued. See _wait_for on the race.
        self._arrived = arrived = self._arrived + 1
        self._arrived_rows = arrived_rows = self._arrived_rows + rows
        if arrived == self._wake_at or arrived_rows - rows < self._wake_rows <= arrived_rows:
            self._ready.set()
        return await item.future

    def close(self, timeout: float = 5.0) -> None:
        """Finish the batch in progress, refuse what is still queued, stop the thread."""
        self._queue.put(_STOP)
        self._ready.set()  # a waiting call stops waiting
        self._thread.join(timeout)

    # ---- the model thread ----
    def _run_forever(self) -> None:
        while True:
            deadline = None
            if not self._held and self._queue.empty():
                deadline = self._idle()
            item = self._held.pop(0) if self._held else self._queue.get()
            if item is _STOP:
                self._refuse_rest()
                return
            batch, stop = self._fill([item], deadline)
            try:
                self._run(batch)
            except BaseException:  # never let the thread die; _run answered every caller it could
                log.exception("model thread error")
            if stop:
                self._refuse_rest()
                return

    def _idle(self) -> float | None:
        """Nothing queued. When recent calls had company, wait (up to max_wait) for as many requests as they had,
        in one sleep, rather than waking for the first arrival and again for the rest. Returns the deadline for
        the call to come, or None when there was nothing to wait for (the next request starts at once)."""
        expected = max(self._recent)
        if expected < 2 or self.max_wait <= 0:
            return None
        deadline = time.monotonic() + self.max_wait
        self._wait_for(expected, self.max_batch_size, deadline)
        if self._queue.empty():  # nobody came within max_wait: the concurrent callers are gone
            self.stats.waits_expired += 1
            self._recent.clear()
            self._recent.append(1)
            return None
        return deadline

    def _fill(self, batch: list[_Item], deadline: float | None) -> tuple[list[_Item], bool]:
        """Add every queued request that fits the first one; wait (until `deadline`, or max_wait from now) for
        as many requests as recent calls held, unless the batch is full."""
        if self._queue.empty():
            # Let the event loop (waiting for the GIL) hand over requests it is already parsing, so that
            # under load they join this call. When nothing waits, this returns at once.
            time.sleep(0)
        rows, key = batch[0].rows, batch[0].key
        expected = max(self._recent) if self.max_wait > 0 else 1
        held = self._held
        self._held = []
        for item in held:  # earlier leftovers first, in order
            rows = self._place(item, batch, rows, key)
        expired = False
        while True:
            while rows < self.max_batch_size:  # take what is queued
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    return batch, True
                rows = self._place(item, batch, rows, key)
            if rows >= self.max_batch_size or len(batch) >= expected:
                break
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.max_wait
            if deadline <= now:
                expired = True
                break
            self._wait_for(expected - len(batch), self.max_batch_size - rows, deadline)
        if expired:  # fewer callers than recently seen: expect only as many as came
            self.stats.waits_expired += 1
            self._recent.clear()
        self._recent.append(len(batch))
        return batch, False

    def _wait_for(self, requests: int, rows: int, deadline: float) -> None:
        """Sleep until `requests` more requests or `rows` more rows have been queued, or until `deadline`.

        The event loop writes `_arrived*` and then reads `_wake_*`; this thread writes `_wake_*` and then reads
        `_arrived*`. Under the GIL one of the two sees the other's write, so an arrival that reaches the
        count is never missed: either the loop sets the event, or the check below finds the count reached."""
        self._ready.clear()
        self._wake_at = self._arrived + requests
        self._wake_rows = self._arrived_rows + rows
        if self._arrived < self._wake_at and self._arrived_rows < self._wake_rows:
            self._ready.wait(max(deadline - time.monotonic(), 0.0))
        self._wake_at = self._wake_rows = _NEVER

    def _place(self, item: _Item, batch: list[_Item], rows: int, key) -> int:
        if item.key == key and rows + item.rows <= self.max_batch_size:
            batch.append(item)
            return rows + item.rows
        self._held.append(item)
        return rows

    def _run(self, batch: list[_Item]) -> None:
        batch = [item for item in batch if not item.future.done()]  # callers that gave up
        if not batch:
            return
        self._count(batch)
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        names = list(batch[0].inputs)
        joined = {name: np.concatenate([item.inputs[name] for item in batch]) for name in names}
        outputs, error = self._call(joined, len(batch))
        ended = time.perf_counter()
        total = sum(item.rows for item in batch)
        if error is not None or any(len(array) != total for array in outputs.values()):
            # One bad request must not fail the others: run each alone and let it get its own answer.
            for item in batch:
                self._run_alone(item)
            return
        if len(outputs) == 1 and total == len(batch):  # one output, one row per request: the common case
            ((name, array),) = outputs.items()
            results = [{name: array[i:i + 1]} for i in range(total)]
        else:
            results, start = [], 0
            for item in batch:
                results.append({name: array[start:start + item.rows] for name, array in outputs.items()})
                start += item.rows
        batch[0].loop.call_soon_threadsafe(_deliver, batch, results, None)
        self._finished(batch, None, ended)
        self._notify(batch, joined, outputs)

    def _run_alone(self, item: _Item) -> None:
        outputs, error = self._call(item.inputs, 1)
        self._finished([item], error, time.perf_counter())
        self._answer([item], outputs, error)
        if error is None:
            self._notify([item], item.inputs, outputs)

    def _notify(self, batch: list[_Item], inputs: Tensors, outputs: Tensors) -> None:
        if self._observe is None:
            return
        try:
            self._observe([item.tag for item in batch], inputs, outputs, [item.rows for item in batch])
        except Exception:  # an observer's failure must not touch serving
            log.exception("batch observer failed")

    def _call(self, inputs: Tensors, requests: int) -> tuple[Tensors | None, BaseException | None]:
        began = time.perf_counter()
        try:
            return self._predict(inputs), None
        except Exception as exc:
            return None, exc
        finally:
            took = time.perf_counter() - began
            self.stats.compute_seconds += took
            self.stats.request_compute_seconds += took * requests

    def _finished(self, batch: list[_Item], error, ended: float) -> None:
        stats = self.stats
        took = ended * len(batch) - sum(item.started for item in batch)
        if error is None:
            stats.succeeded += len(batch)
            stats.succeeded_seconds += took
        else:
            stats.failed += len(batch)
            stats.failed_seconds += took

    def _answer(self, batch: list[_Item], outputs, error) -> None:
        batch[0].loop.call_soon_threadsafe(_deliver, batch, [outputs] * len(batch), error)

    def _refuse_rest(self) -> None:
        pending = self._held
        self._held = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                pending.append(item)
        for item in pending:
            item.loop.call_soon_threadsafe(_deliver, [item], [None], RuntimeError("the server is shutting down"))

    def _count(self, batch: list[_Item]) -> None:
        """Count a call about to start, and its requests' time in the queue."""
        stats = self.stats
        began = time.perf_counter()
        size = len(batch)
        stats.calls += 1
        stats.requests += size
        stats.rows += sum(item.rows for item in batch)
        stats.queue_seconds += began * size - sum(item.started for item in batch)
        stats.largest = max(stats.largest, size)
        stats.sizes[size] = stats.sizes.get(size, 0) + 1


def _deliver(batch: list[_Item], results: list, error: BaseException | None) -> None:
    """On the event loop: hand each caller its rows (or the error)."""
    for item, result in zip(batch, results):
        if item.future.done():
            continue
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)
