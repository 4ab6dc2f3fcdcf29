"""Dynamic batching under many concurrent callers, overload, errors and shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.errors import ModelNotReady, Overloaded
from service.runtime import DynamicBatcher


def _square_rows(items: list[np.ndarray]) -> list[np.ndarray]:
    sizes = [len(i) for i in items]
    out = np.concatenate(items) ** 2
    time.sleep(0.002)
    return list(np.split(out, np.cumsum(sizes)[:-1]))


def test_many_callers_each_get_their_own_result() -> None:
    async def main() -> DynamicBatcher[np.ndarray, np.ndarray]:
        b: DynamicBatcher[np.ndarray, np.ndarray] = DynamicBatcher(
            _square_rows, max_batch=32, max_delay_ms=5, queue_size=1000, size_of=len
        )
        # caller i submits (i % 3 + 1) rows, all holding the value i
        inputs = [np.full((i % 3 + 1, 2), float(i)) for i in range(200)]
        results = await asyncio.gather(*(b.submit(x) for x in inputs))
        for x, r in zip(inputs, results, strict=True):
            assert r.shape == x.shape
            assert np.array_equal(r, x**2)
        await b.aclose()
        return b

    b = asyncio.run(main())
    assert b.items_run == 200
    assert max(b.batch_sizes) > 1
    assert max(b.batch_sizes) <= 32
    assert sum(b.batch_sizes) == sum(i % 3 + 1 for i in range(200))


def test_oversized_item_runs_in_chunks_of_max_batch() -> None:
    seen: list[int] = []

    def run(items: list[np.ndarray]) -> list[np.ndarray]:
        seen.append(sum(len(i) for i in items))
        return _square_rows(items)

    async def main() -> None:
        chunks = lambda a, n: [a[i : i + n] for i in range(0, len(a), n)]  # noqa: E731
        b = DynamicBatcher(run, max_batch=4, max_delay_ms=1, size_of=len, split=chunks, join=np.concatenate)
        item = np.arange(10.0).reshape(10, 1)
        r = await b.submit(item)
        assert r.shape == (10, 1) and np.array_equal(r, item**2)
        await b.aclose()
        unsplittable = DynamicBatcher(run, max_batch=4, max_delay_ms=1, size_of=len)
        with pytest.raises(ValueError, match="over max_batch=4"):
            await unsplittable.submit(item)

    asyncio.run(main())
    assert seen and max(seen) <= 4 and sum(seen) == 10


def test_full_queue_raises_overloaded() -> None:
    gate = threading.Event()

    def blocked(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    async def main() -> None:
        b = DynamicBatcher(blocked, max_batch=1, max_delay_ms=0, queue_size=3)
        tasks = [asyncio.create_task(b.submit(0))]
        await asyncio.sleep(0.05)  # item 0 is running (blocked); the next 3 fill the queue
        tasks += [asyncio.create_task(b.submit(i)) for i in range(1, 4)]
        await asyncio.sleep(0.05)
        assert b.queue_depth == 3
        with pytest.raises(Overloaded) as info:
            await b.submit(99)
        assert info.value.retry_after_s > 0
        gate.set()
        assert await asyncio.gather(*tasks) == [0, 1, 2, 3]
        await b.aclose()

    asyncio.run(main())


def test_batch_error_reaches_every_caller_and_worker_survives() -> None:
    def flaky(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad batch")
        return [i * 10 for i in items]

    async def main() -> None:
        b = DynamicBatcher(flaky, max_batch=8, max_delay_ms=20)
        results = await asyncio.gather(b.submit(-1), b.submit(2), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        assert await b.submit(3) == 30
        await b.aclose()

    asyncio.run(main())


def test_shutdown_fails_waiting_callers_and_does_not_hang() -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(0.2)
        return items

    async def main() -> None:
        b = DynamicBatcher(slow, max_batch=1, max_delay_ms=0, queue_size=100)
        tasks = [asyncio.create_task(b.submit(i)) for i in range(5)]
        await asyncio.sleep(0.02)
        await asyncio.wait_for(b.aclose(), 2)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
        assert results[0] == 0  # the running batch finished
        assert all(isinstance(r, ModelNotReady) for r in results[1:])
        with pytest.raises(ModelNotReady):
            await b.submit(7)

    asyncio.run(main())


def test_cancelled_caller_is_skipped() -> None:
    seen: list[int] = []

    def record(items: list[int]) -> list[int]:
        seen.extend(items)
        return items

    async def main() -> None:
        b = DynamicBatcher(record, max_batch=8, max_delay_ms=30)
        t = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0)
        t.cancel()
        assert await b.submit(2) == 2
        await b.aclose()

    asyncio.run(main())
    assert seen == [2]


def test_a_lone_item_runs_at_once_and_an_announced_one_is_waited_for() -> None:
    """The batch waits `max_delay_ms` only for items that callers have announced (`coming`: their faces are still
    being found), so a lone request pays no batching delay; an announced item joins the batch that is waiting."""
    batches: list[list[int]] = []

    def record(items: list[int]) -> list[int]:
        batches.append(list(items))
        return items

    async def main() -> float:
        b = DynamicBatcher(record, max_batch=8, max_delay_ms=10_000)
        start = time.perf_counter()
        assert await b.submit(1) == 1  # nobody else coming: no 10 s wait
        lone = time.perf_counter() - start

        async def announced() -> int:
            with b.coming():
                await asyncio.sleep(0.2)  # finding the faces while item 2 waits for a batch
            return await b.submit(3)

        later = asyncio.create_task(announced())
        await asyncio.sleep(0)  # it has announced its item
        assert await b.submit(2) == 2
        assert await later == 3
        await b.aclose()
        return lone

    assert asyncio.run(main()) < 5.0
    assert batches == [[1], [2, 3]]


def test_an_announced_item_that_never_comes_does_not_hold_the_batch() -> None:
    """A caller whose preparation fails (or is cancelled) withdraws its announcement, and the waiting batch runs
    at once instead of waiting out `max_delay_ms`."""

    async def main() -> float:
        b: DynamicBatcher[int, int] = DynamicBatcher(lambda items: items, max_batch=8, max_delay_ms=10_000)

        async def failing() -> None:
            with b.coming():
                await asyncio.sleep(0.2)
                raise ValueError("not an image")

        doomed = asyncio.create_task(failing())
        await asyncio.sleep(0)
        start = time.perf_counter()
        assert await b.submit(1) == 1
        waited = time.perf_counter() - start
        with pytest.raises(ValueError):
            await doomed
        await b.aclose()
        return waited

    assert asyncio.run(main()) < 5.0
