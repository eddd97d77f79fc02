"""``Coalescer``: concurrent calls of one operation gathered into batches.

An agent host serving many conversations at once issues thousands of small writes together.
Run one by one, each holds a pooled connection for its round trips and the rest queue for one;
past ``pool_timeout`` they fail although the server is idle most of that time. A coalescer
queues the calls instead and runs whatever has queued as one batch — one embedding call, one
COPY — on at most ``lanes`` connections at a time. A lone call runs at once, as a batch of one.

The rules a caller can rely on:

* every call gets its own outcome: the batch function returns one result or exception per
  item, in order;
* a queued call fails with :class:`MemoryTimeoutError`, and is never run, once it has waited
  ``wait_timeout`` seconds during which no batch started: the coalescer is stuck (every lane
  held by a blocked statement), the way a pool with no connection free for ``pool_timeout``
  is. A long queue that keeps moving never times out: a burst of ten thousand calls waits for
  the batches before it, as it would wait for its own round trips;
* a call cancelled before its batch started is dropped; after, it runs to completion like a
  cancelled statement would;
* :meth:`drain` waits for every queued and running batch (a store drains before closing).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from .errors import MemoryConnectionError, MemoryTimeoutError

__all__ = ["Coalescer", "BatchFunction", "together_or_alone"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

BatchFunction = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Coalescer(Generic[T, R]):
    """Gathers concurrent :meth:`submit` calls into batches for ``run``.

    Args:
        operation: the operation's name, for error messages.
        run: takes the queued items (at most ``max_batch``) and returns one result or
            exception per item, in the same order. An exception it raises is every item's.
        lanes: how many batches may run at once.
        max_batch: the largest batch.
        wait_timeout: seconds a queued call may wait while no batch starts.
    """

    def __init__(
        self,
        operation: str,
        run: BatchFunction[T, R],
        *,
        lanes: int,
        max_batch: int,
        wait_timeout: float,
    ) -> None:
        if lanes < 1 or max_batch < 1:
            raise ValueError("a coalescer needs at least one lane and batches of at least one")
        self.operation = operation
        self._run = run
        self._lanes = lanes
        self._max_batch = max_batch
        self._wait_timeout = wait_timeout
        # The queue is three deques kept in step rather than one object per call: a burst
        # queues thousands, each such object one more for the garbage collector to walk
        # (its full passes walk every object of the process) until the call is answered.
        self._items: collections.deque[T] = collections.deque()
        self._futures: collections.deque[asyncio.Future[R]] = collections.deque()
        self._queued_at: collections.deque[float] = collections.deque()
        self._running: set[asyncio.Task[None]] = set()
        # One timer for the oldest queued call, not one per call: a burst queues thousands.
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_start = float("-inf")  # when a lane last took a batch

    @property
    def queued(self) -> int:
        """Calls waiting for a batch to start."""
        return len(self._futures)

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its outcome."""
        return await self.enqueue(item)

    def enqueue(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future holds its outcome. :meth:`submit` without a coroutine of
        its own, for callers that queue thousands at once (each coroutine is garbage the
        collector walks)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        now = loop.time()
        self._items.append(item)
        self._futures.append(future)
        self._queued_at.append(now)
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._deadline(now), self._expire)
        if len(self._running) < self._lanes:
            lane = loop.create_task(self._lane())
            self._running.add(lane)
            lane.add_done_callback(self._running.discard)
        return future

    def _deadline(self, queued_at: float) -> float:
        return max(queued_at, self._last_start) + self._wait_timeout

    def _pop(self) -> tuple[T, asyncio.Future[R]]:
        """The oldest queued call, out of the queue."""
        self._queued_at.popleft()
        return self._items.popleft(), self._futures.popleft()

    def _expire(self) -> None:
        """Fail the queued calls that waited ``wait_timeout`` with no batch starting (the
        oldest are first), then watch the next one."""
        self._watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._futures and self._deadline(self._queued_at[0]) <= now:
            _, future = self._pop()
            if not future.done():
                future.set_exception(
                    MemoryTimeoutError(
                        f"{self.operation}: waited {self._wait_timeout:g}s and no earlier call "
                        "finished; raise pool_timeout or max_size, or run fewer operations at "
                        "once"
                    )
                )
        if self._futures:
            self._watchdog = loop.call_at(self._deadline(self._queued_at[0]), self._expire)

    def _take(self) -> tuple[list[T], list[asyncio.Future[R]]]:
        """The next batch: its items and their futures."""
        self._last_start = asyncio.get_running_loop().time()
        items: list[T] = []
        futures: list[asyncio.Future[R]] = []
        while self._futures and len(futures) < self._max_batch:
            item, future = self._pop()
            if not future.done():  # not cancelled while it waited
                items.append(item)
                futures.append(future)
        return items, futures

    async def _lane(self) -> None:
        while self._futures:
            items, futures = self._take()
            if not futures:
                continue
            try:
                outcomes = await self._run(items)
            except asyncio.CancelledError:
                for future in futures:
                    future.cancel()
                raise
            except Exception as exc:  # the batch's failure is every call's
                outcomes = [exc] * len(futures)
            except BaseException as exc:  # KeyboardInterrupt, SystemExit: theirs, and ours
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                raise
            if len(outcomes) != len(futures):
                mismatch = RuntimeError(
                    f"{self.operation}: a batch of {len(futures)} got {len(outcomes)} outcomes"
                )
                outcomes = [mismatch] * len(futures)
            for future, outcome in zip(futures, outcomes, strict=True):
                if future.done():  # its caller gave up meanwhile
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def drain(self) -> None:
        """Wait until nothing is queued or running."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


async def together_or_alone(
    operation: str,
    items: list[T],
    together: Callable[[list[T]], Awaitable[list[R]]],
    alone: Callable[[T], Awaitable[R]],
) -> list[R | BaseException]:
    """A batch function's usual policy: run ``items`` together; if that fails on anything but
    the server or the pool (perhaps one item's data failed them all), run each alone, so that
    each gets its own outcome. A :class:`MemoryConnectionError` is every item's: raised."""
    if len(items) > 1:
        try:
            return list(await together(items))
        except MemoryConnectionError:
            raise
        except Exception as exc:
            logger.debug("%s: a batch of %d failed (%r); one by one", operation, len(items), exc)
    outcomes: list[R | BaseException] = []
    for item in items:
        try:
            outcomes.append(await alone(item))
        except MemoryConnectionError:
            raise
        except Exception as exc:
            outcomes.append(exc)
    return outcomes
