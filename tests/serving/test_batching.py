"""The Batcher with a recording predict function on its real model thread (no model needed)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from serving.batching import Batcher


class RecordingModel:
    """y = 2x + row sum, so every caller's rows are recognisable. Can be held busy with `gate`."""

    def __init__(self, fail_on=None):
        self.calls: list[int] = []  # rows per call
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_on = fail_on

    def __call__(self, inputs):
        self.started.set()
        self.gate.wait(10)
        x = inputs["x"]
        self.calls.append(len(x))
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ValueError("bad value")
        return {"y": x * 2 + x.sum(axis=1, keepdims=True), "n": np.arange(len(x))}


def run(coro):
    return asyncio.run(coro)


def rows(i: int, n: int = 1, width: int = 3) -> dict:
    return {"x": np.full((n, width), float(i), dtype=np.float32)}


async def behind_a_busy_model(model: RecordingModel, batcher: Batcher, queued: list[dict], *, tags=None,
                              first_tag=None) -> list[asyncio.Future]:
    """Hold the model busy with one request (rows(0)) while the `queued` requests line up behind it, then
    let it go. Returns every request's future, the held one's first."""
    model.gate.clear()
    held = asyncio.ensure_future(batcher.predict(rows(0), first_tag))
    await asyncio.to_thread(model.started.wait, 10)
    futures = [asyncio.ensure_future(batcher.predict(inputs, tag))
               for inputs, tag in zip(queued, tags or [None] * len(queued))]
    await asyncio.sleep(0.05)
    model.gate.set()
    return [held, *futures]


def test_queued_requests_run_as_one_call_and_each_gets_its_rows():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, max_batch_size=1000)
        results = await asyncio.gather(*await behind_a_busy_model(
            model, batcher, [rows(i, n=1 + i % 3) for i in range(1, 64)]))
        batcher.close()
        return batcher, results

    batcher, results = run(main())
    assert model.calls == [1, sum(1 + i % 3 for i in range(1, 64))]  # one call for everything that queued
    for i, result in enumerate(results):
        n = 1 if i == 0 else 1 + i % 3
        expected = rows(i, n)["x"] * 2 + rows(i, n)["x"].sum(axis=1, keepdims=True)
        np.testing.assert_array_equal(result["y"], expected)
    assert batcher.stats.requests == 64 and batcher.stats.calls == 2 and batcher.stats.largest == 63


def test_max_batch_size_bounds_a_call():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, max_batch_size=10)
        # 24 rows in requests of 3, then one alone as it is larger than the limit
        await asyncio.gather(*await behind_a_busy_model(
            model, batcher, [rows(i, n=3) for i in range(1, 9)] + [rows(99, n=25)]))
        batcher.close()

    run(main())
    assert model.calls[0] == 1 and sorted(model.calls[1:]) == [6, 9, 9, 25]
    assert all(rows_ <= 10 for rows_ in model.calls if rows_ != 25)


def test_incompatible_shapes_are_not_mixed():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, max_batch_size=100)
        results = await asyncio.gather(*await behind_a_busy_model(
            model, batcher, [rows(i, width=3) for i in range(5)] + [rows(i, width=4) for i in range(5)]))
        batcher.close()
        return results

    results = run(main())
    assert model.calls == [1, 5, 5]
    assert [r["y"].shape for r in results[6:]] == [(1, 4)] * 5


def test_one_bad_request_does_not_fail_its_batch():
    model = RecordingModel(fail_on=13.0)

    async def main():
        batcher = Batcher(model, max_batch_size=100)
        results = await asyncio.gather(*await behind_a_busy_model(
            model, batcher, [rows(i) for i in (11, 12, 13, 14)]), return_exceptions=True)
        batcher.close()
        return results

    results = run(main())
    assert isinstance(results[3], ValueError)
    for i, result in zip((11, 12, 14), (results[1], results[2], results[4])):
        assert result["y"][0, 0] == i * 2 + i * 3


def test_max_wait_gathers_requests_that_arrive_within_it():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, max_batch_size=4, max_wait_ms=2000)
        tasks = []
        for i in range(4):  # arrive one by one while the model is idle
            tasks.append(asyncio.ensure_future(batcher.predict(rows(i))))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        batcher.close()

    run(main())
    assert model.calls == [4]  # the call waited until it was full


def test_without_batching_every_request_is_its_own_call():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, enabled=False)
        await asyncio.gather(*await behind_a_busy_model(model, batcher, [rows(i) for i in range(1, 4)]))
        batcher.close()

    run(main())
    assert model.calls == [1, 1, 1, 1]


def test_scalar_inputs_run_unbatched():
    seen = []

    def scalar_model(inputs):
        seen.append(inputs["t"].shape)
        return {"y": inputs["t"] * 2}

    async def main():
        batcher = Batcher(scalar_model, enabled=False)
        results = await asyncio.gather(*(batcher.predict({"t": np.float32(i)}) for i in range(3)))
        batcher.close()
        return results

    results = run(main())
    assert [float(r["y"]) for r in results] == [0.0, 2.0, 4.0] and seen == [()] * 3


def test_sequential_callers_never_wait():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, max_wait_ms=1000)
        await batcher.predict(rows(0))  # the very first call knows no history and may wait
        took = []
        for i in range(1, 6):
            began = time.monotonic()
            await batcher.predict(rows(i))
            took.append(time.monotonic() - began)
        batcher.close()
        return took

    took = run(main())
    assert max(took) < 0.5, took  # far below max_wait: a call after a one-request call does not wait
    assert model.calls == [1] * 6


def test_concurrent_callers_are_gathered_and_sequential_ones_then_stop_waiting():
    model = RecordingModel()

    async def staggered(batcher, first: int, n: int):
        tasks = []
        for i in range(first, first + n):  # arrive one by one while the model is idle
            tasks.append(asyncio.ensure_future(batcher.predict(rows(i))))
            await asyncio.sleep(0.02)
        return await asyncio.gather(*tasks)

    async def main():
        batcher = Batcher(model, max_batch_size=4, max_wait_ms=1000)
        # Concurrency shows: the first request holds the model while two more queue behind it.
        await asyncio.gather(*await behind_a_busy_model(model, batcher, [rows(1), rows(2)]))
        calls_before = len(model.calls)
        # The previous call had company, so the next one waits and gathers requests arriving 20 ms apart.
        results = await staggered(batcher, 10, 4)
        assert model.calls[calls_before:] == [4]  # stopped waiting when full
        for i, result in zip(range(10, 14), results):
            np.testing.assert_array_equal(result["y"], rows(i)["x"] * 2 + rows(i)["x"].sum(axis=1, keepdims=True))
        # Load stops: one lone request waits in vain (the last call had company), later ones do not wait.
        took = []
        for i in range(20, 23):
            began = time.monotonic()
            await batcher.predict(rows(i))
            took.append(time.monotonic() - began)
        batcher.close()
        return calls_before, took

    calls_before, took = run(main())
    assert model.calls[calls_before:] == [4, 1, 1, 1]
    assert took[0] >= 0.9 and max(took[1:]) < 0.5, took
    assert model.calls[:calls_before] in ([1, 2], [3])  # whether the first call caught the others is timing


class Observer:
    def __init__(self, fail: bool = False):
        self.calls: list[tuple[list, dict, dict, list[int]]] = []
        self.fail = fail

    def __call__(self, tags, inputs, outputs, rows):
        self.calls.append((tags, inputs, outputs, rows))
        if self.fail:
            raise RuntimeError("observer broke")


def test_the_observer_sees_each_model_call_with_its_callers_tags_and_rows():
    model, observer = RecordingModel(fail_on=13.0), Observer()

    async def main():
        batcher = Batcher(model, max_batch_size=100, observe=observer)
        await asyncio.gather(*await behind_a_busy_model(
            model, batcher, [rows(i, n=i) for i in (1, 2, 3)], tags=["t1", "t2", "t3"], first_tag="t0"))
        # a failing request in a batch: the others run alone, the failing one is never observed
        model.gate.clear()
        blocker = asyncio.ensure_future(batcher.predict(rows(0), tag="b"))
        await asyncio.sleep(0.05)
        mixed = [asyncio.ensure_future(batcher.predict(rows(i), tag=f"m{i}")) for i in (12, 13)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(blocker, *mixed, return_exceptions=True)
        batcher.close()

    run(main())
    tags = [call[0] for call in observer.calls]
    assert tags == [["t0"], ["t1", "t2", "t3"], ["b"], ["m12"]]
    _, inputs, outputs, counts = observer.calls[1]
    assert counts == [1, 2, 3] and inputs["x"].shape == (6, 3) and outputs["y"].shape == (6, 3)
    np.testing.assert_array_equal(inputs["x"][:, 0], [1, 2, 2, 3, 3, 3])


def test_a_failing_observer_does_not_touch_the_answers():
    model, observer = RecordingModel(), Observer(fail=True)

    async def main():
        batcher = Batcher(model, observe=observer)
        results = [await batcher.predict(rows(i), tag=i) for i in range(3)]
        batcher.close()
        return results

    results = run(main())
    assert [r["y"][0, 0] for r in results] == [0.0, 5.0, 10.0] and len(observer.calls) == 3
