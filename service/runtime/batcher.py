"""Dynamic batching in the style of Triton: callers submit items, one worker runs them in batches.

The worker takes the first waiting item, then, while other callers have announced an item (`coming`:
an image whose faces are still being found), waits at most `max_delay_ms` for more until the batch
holds `max_batch` units (an item counts `size_of(item)` units, e.g. its number of faces), runs one
batched call in a thread and hands every caller exactly its own result. An item bigger than
`max_batch` is cut into chunks of at most `max_batch` units by `split` and their results put back
together by `join`, so no model call ever exceeds `max_batch` (without `split`, it is refused).
The queue holds at most `queue_size` items; beyond that `submit` raises
`Overloaded`. A failing batch fails each of its callers; `aclose` fails the waiting callers and
lets the running batch finish, so nothing hangs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import ModelNotReady, Overloaded

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[list[T]], list[R]]
BatchObserver = Callable[[int, int, float], None]  # (items, units, seconds)


@dataclass
class _Entry:
    item: Any
    units: int
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0


@dataclass(frozen=True)
class Timed(Generic[R]):
    """A result with the time its item waited in the queue and the time its batch took to run."""

    result: R
    queue_s: float
    run_s: float
    batch_units: int


class DynamicBatcher(Generic[T, R]):
    """`await submit(item)` -> that item's result, computed in a batch with other callers' items."""

    def __init__(
        self,
        run_batch: BatchFn[T, R],
        *,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        queue_size: int = 512,
        size_of: Callable[[T], int] | None = None,
        split: Callable[[T, int], list[T]] | None = None,
        join: Callable[[list[R]], R] | None = None,
        executor: Executor | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_delay_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_delay_ms >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.queue_size = queue_size
        self.size_of = size_of or (lambda _item: 1)
        self.split = split
        self.join = join
        self.executor = executor
        self.name = name
        self._pending: collections.deque[_Entry] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._coming = 0  # callers that will submit an item soon (`coming`)
        # metrics: read these or subscribe to `observers`
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1024)  # units per batch
        self.batches_run = 0
        self.items_run = 0
        self.last_batch_s = 0.0
        self.observers: list[BatchObserver] = []

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting the batch running now)."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    def _ensure_worker(self) -> asyncio.Event:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"{self.name}-worker")
        return self._wakeup

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Announce an item for the time of the block (its preparation): a batch waits for announced items,
        and only for them, up to `max_delay_ms`. Submit right after the block, with no await in between."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1
            if self._wakeup is not None:
                self._wakeup.set()

    async def submit(self, item: T) -> R:
        """The result of `item`; raises `Overloaded` when the queue is full, the batch's error if it failed."""
        return (await self.submit_timed(item)).result

    async def submit_timed(self, item: T) -> Timed[R]:
        """Like `submit`, with the queue wait and batch run time of this item."""
        units = max(1, int(self.size_of(item)))
        if units > self.max_batch:
            return await self._submit_chunks(item, units)
        if self._closed:
            raise ModelNotReady(f"{self.name} is shut down")
        if len(self._pending) >= self.queue_size:
            batches_ahead = len(self._pending) / self.max_batch + 1
            retry = round(max(0.05, batches_ahead * max(self.last_batch_s, self.max_delay_s)), 3)
            raise Overloaded(
                f"{self.name} queue is full ({self.queue_size} waiting); retry later",
                retry_after_s=retry,
                detail={"queue_size": self.queue_size},
            )
        wakeup = self._ensure_worker()
        entry = _Entry(item, units, asyncio.get_running_loop().create_future())
        self._pending.append(entry)
        wakeup.set()
        result, run_s, units = await entry.future
        return Timed(result, entry.started - entry.enqueued, run_s, units)

    async def _submit_chunks(self, item: T, units: int) -> Timed[R]:
        if self.split is None or self.join is None:
            raise ValueError(f"{self.name}: an item of {units} units is over max_batch={self.max_batch}")
        chunks = self.split(item, self.max_batch)
        parts = [await self.submit_timed(chunk) for chunk in chunks]  # one at a time: memory stays at one batch
        return Timed(
            self.join([p.result for p in parts]),
            sum(p.queue_s for p in parts),
            sum(p.run_s for p in parts),
            max(p.batch_units for p in parts),
        )

    def _pending_units(self) -> int:
        return sum(e.units for e in self._pending)

    def _take(self) -> list[_Entry]:
        batch: list[_Entry] = []
        units = 0
        while self._pending:
            entry = self._pending[0]
            if entry.future.done():  # the caller gave up (cancelled) while waiting
                self._pending.popleft()
                continue
            if batch and units + entry.units > self.max_batch:
                break
            batch.append(self._pending.popleft())
            units += entry.units
        return batch

    async def _work(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self._pending:
                wakeup.clear()
                await wakeup.wait()
                continue
            deadline = loop.time() + self.max_delay_s
            while not self._closed and self._coming > 0 and self._pending_units() < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wakeup.clear()
                try:
                    await asyncio.wait_for(wakeup.wait(), remaining)
                except TimeoutError:
                    break
            if self._closed:
                break
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        for entry in batch:
            entry.started = started
        units = sum(e.units for e in batch)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run_batch, [e.item for e in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: batch of {len(batch)} items returned {len(results)} results")
        except BaseException as exc:  # every caller of the batch learns of the failure
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        run_s = time.perf_counter() - started
        self.last_batch_s = run_s
        self.batch_sizes.append(units)
        self.batches_run += 1
        self.items_run += len(batch)
        for observer in self.observers:
            observer(len(batch), units, run_s)
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result((result, run_s, units))

    async def aclose(self) -> None:
        """Stop accepting items, fail the waiting ones, let the running batch finish."""
        self._closed = True
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(ModelNotReady(f"{self.name} shut down before this item ran"))
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
            self._worker = None
