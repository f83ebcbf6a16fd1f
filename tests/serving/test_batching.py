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


async def staggered(batcher: Batcher, first: int, n: int, gap: float = 0.02) -> list[dict]:
    """`n` requests arriving one by one, `gap` s apart (while the model is idle); their results in order."""
    tasks = []
    for i in range(first, first + n):
        tasks.append(asyncio.ensure_future(batcher.predict(rows(i))))
        await asyncio.sleep(gap)
    return await asyncio.gather(*tasks)


class CountingEvent(threading.Event):
    """A threading.Event that counts how often it is set (how often the event loop wakes the model thread)."""

    def __init__(self):
        super().__init__()
        self.sets = 0

    def set(self):
        self.sets += 1
        super().set()


def test_max_wait_gathers_requests_that_arrive_within_it():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, max_batch_size=4, max_wait_ms=2000)
        # Four concurrent callers show up in a call, so the next call expects four.
        await asyncio.gather(*await behind_a_busy_model(model, batcher, [rows(i) for i in range(1, 5)]))
        calls_before = len(model.calls)
        await staggered(batcher, 10, 3, gap=0.01)  # three come: the call waits them out, then runs what it has
        batcher.close()
        return calls_before

    calls_before = run(main())
    assert model.calls[:calls_before] == [1, 4] and model.calls[calls_before:] == [3]


def test_a_call_starts_as_soon_as_it_holds_as_many_requests_as_recent_calls():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, max_batch_size=1000, max_wait_ms=5000)
        batcher._ready = CountingEvent()
        # Eight concurrent callers queue behind a busy model: the next call holds 8, so later calls expect 8.
        await asyncio.gather(*await behind_a_busy_model(model, batcher, [rows(i) for i in range(1, 9)]))
        calls_before, wakes_before = len(model.calls), batcher._ready.sets
        began = time.monotonic()
        results = await staggered(batcher, 20, 8)  # 8 arrive 20 ms apart, far within the 5 s max_wait
        took = time.monotonic() - began
        wakes = batcher._ready.sets - wakes_before
        batcher.close()
        return calls_before, results, took, wakes

    calls_before, results, took, wakes = run(main())
    assert model.calls[:calls_before] == [1, 8]
    assert model.calls[calls_before:] == [8]  # one call, started when the eighth request came
    assert took < 2.0, took  # ~0.16 s of arrivals; waiting for max_wait would take 5 s
    assert wakes == 1  # the event loop woke the model thread once for the call, not once per arrival
    for i, result in zip(range(20, 28), results):
        np.testing.assert_array_equal(result["y"], rows(i)["x"] * 2 + rows(i)["x"].sum(axis=1, keepdims=True))


def test_a_call_starts_when_it_holds_max_batch_size_rows():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, max_batch_size=6, max_wait_ms=5000)
        await asyncio.gather(*await behind_a_busy_model(model, batcher, [rows(i) for i in range(1, 5)]))
        calls_before = len(model.calls)
        began = time.monotonic()
        tasks = [asyncio.ensure_future(batcher.predict(rows(i, n=3))) for i in (10, 11)]  # 2 requests, 6 rows
        await asyncio.gather(*tasks)
        took = time.monotonic() - began
        batcher.close()
        return calls_before, took

    calls_before, took = run(main())
    assert model.calls[calls_before:] == [6] and took < 2.0, took  # full by rows though 4 requests were expected


def test_answers_go_to_their_callers_under_concurrent_load():
    model = RecordingModel()

    async def caller(batcher, who: int, times: int):
        for k in range(times):
            value = who * 100 + k
            result = await batcher.predict(rows(value, n=1 + who % 3), tag=who)
            expected = rows(value, n=1 + who % 3)["x"]
            np.testing.assert_array_equal(result["y"], expected * 2 + expected.sum(axis=1, keepdims=True))

    async def main():
        batcher = Batcher(model, max_batch_size=16, max_wait_ms=5)
        await asyncio.gather(*(caller(batcher, who, 30) for who in range(12)))
        batcher.close()
        return batcher

    batcher = run(main())
    assert batcher.stats.requests == 12 * 30 and batcher.stats.largest >= 2
    assert sum(model.calls) == batcher.stats.rows == 30 * sum(1 + who % 3 for who in range(12))


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
        took = []
        for i in range(6):
            began = time.monotonic()
            await batcher.predict(rows(i))
            took.append(time.monotonic() - began)
        batcher.close()
        return took

    took = run(main())
    assert max(took) < 0.5, took  # far below max_wait, the first call too: one caller is all a call expects
    assert model.calls == [1] * 6


def test_concurrent_callers_are_gathered_and_sequential_ones_then_stop_waiting():
    model = RecordingModel()

    async def main():
        batcher = Batcher(model, max_batch_size=4, max_wait_ms=1000)
        # Concurrency shows: the first request holds the model while three more queue behind it.
        await asyncio.gather(*await behind_a_busy_model(model, batcher, [rows(1), rows(2), rows(3)]))
        calls_before = len(model.calls)
        # Recent calls had 3 requests, so the next one waits for 3 arriving 20 ms apart, then starts.
        results = await staggered(batcher, 10, 3)
        assert model.calls[calls_before:] == [3]
        assert batcher.stats.waits_expired == 0
        for i, result in zip(range(10, 13), results):
            np.testing.assert_array_equal(result["y"], rows(i)["x"] * 2 + rows(i)["x"].sum(axis=1, keepdims=True))
        # Load stops: one lone request waits in vain (recent calls had company), later ones do not wait.
        took = []
        for i in range(20, 24):
            began = time.monotonic()
            await batcher.predict(rows(i))
            took.append(time.monotonic() - began)
            await asyncio.sleep(0.01)
        batcher.close()
        return calls_before, took, batcher.stats.waits_expired

    calls_before, took, waits_expired = run(main())
    assert model.calls[calls_before:] == [3, 1, 1, 1, 1]
    assert waits_expired == 1  # the lone request's wait, counted for the server's stop log
    assert took[0] >= 0.8 and max(took[1:]) < 0.5, took
    assert model.calls[:calls_before] == [1, 3]


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
