"""The coalescer on its own: batching, outcomes per call, waiting limits, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pepperpy_pg_memory import MemoryTimeoutError
from pepperpy_pg_memory.coalesce import Coalescer


class Recorder:
    """A batch function that doubles numbers, fails on negative ones, and remembers batches."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        await self.release.wait()
        await asyncio.sleep(self.delay)
        return [ValueError(f"negative: {i}") if i < 0 else i * 2 for i in items]


def _coalescer(
    run: Recorder, lanes: int = 1, max_batch: int = 100, wait: float = 5.0
) -> Coalescer[int, int]:
    return Coalescer("test", run, lanes=lanes, max_batch=max_batch, wait_timeout=wait)


async def test_a_lone_call_runs_at_once_as_a_batch_of_one() -> None:
    run = Recorder()
    assert await _coalescer(run).submit(21) == 42
    assert run.batches == [[21]]


async def test_concurrent_calls_share_batches_and_each_gets_its_own_result() -> None:
    run = Recorder(delay=0.01)
    coalescer = _coalescer(run, lanes=1, max_batch=50)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(200)))
    assert results == [i * 2 for i in range(200)]
    assert len(run.batches) < 200 // 10  # far fewer batches than calls
    assert all(len(batch) <= 50 for batch in run.batches)
    # Items keep their submission order across batches.
    assert [i for batch in run.batches for i in batch] == list(range(200))


async def test_lanes_bound_how_many_batches_run_at_once() -> None:
    running = 0
    most = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return items

    coalescer: Coalescer[int, int] = Coalescer("test", run, lanes=3, max_batch=5, wait_timeout=5)
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(100))) == list(range(100))
    assert most == 3


async def test_one_failing_item_fails_only_its_call() -> None:
    coalescer = _coalescer(Recorder())
    outcomes = await asyncio.gather(
        *(coalescer.submit(i) for i in (1, -1, 2)), return_exceptions=True
    )
    assert outcomes[0] == 2 and outcomes[2] == 4
    assert isinstance(outcomes[1], ValueError)


async def test_a_batch_that_raises_fails_every_call_in_it() -> None:
    async def run(items: list[int]) -> list[int]:
        raise RuntimeError("server gone")

    coalescer: Coalescer[int, int] = Coalescer("test", run, lanes=1, max_batch=10, wait_timeout=5)
    outcomes = await asyncio.gather(
        *(coalescer.submit(i) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    # The coalescer still works afterwards.
    coalescer._run = Recorder()
    assert await coalescer.submit(5) == 10


async def test_calls_queued_while_no_batch_starts_time_out_and_never_run() -> None:
    run = Recorder()
    run.release.clear()  # the first batch hangs
    coalescer = _coalescer(run, lanes=1, max_batch=1, wait=0.2)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0.01)
    started = asyncio.get_running_loop().time()
    waiting = await asyncio.gather(
        *(coalescer.submit(i) for i in range(2, 6)), return_exceptions=True
    )
    elapsed = asyncio.get_running_loop().time() - started
    assert all(isinstance(o, MemoryTimeoutError) for o in waiting), waiting
    assert "waited 0.2s and no earlier call finished" in str(waiting[0])
    assert elapsed < 10  # not held until the first batch ends (it never would: see below)
    run.release.set()
    assert await first == 2
    await coalescer.drain()
    assert run.batches == [[1]]  # the timed-out calls were never run
    assert coalescer.queued == 0


async def test_a_call_cancelled_before_its_batch_starts_is_dropped() -> None:
    run = Recorder()
    run.release.clear()
    coalescer = _coalescer(run, lanes=1, max_batch=1)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0.01)
    doomed = asyncio.create_task(coalescer.submit(2))
    kept = asyncio.create_task(coalescer.submit(3))
    await asyncio.sleep(0.01)
    doomed.cancel()
    run.release.set()
    assert await first == 2 and await kept == 6
    assert [2] not in run.batches
    with pytest.raises(asyncio.CancelledError):
        await doomed


async def test_drain_waits_for_queued_and_running_batches() -> None:
    run = Recorder(delay=0.02)
    coalescer = _coalescer(run, lanes=1, max_batch=2)
    tasks = [asyncio.create_task(coalescer.submit(i)) for i in range(6)]
    await asyncio.sleep(0)
    await coalescer.drain()
    assert all(task.done() for task in tasks)
    assert [task.result() for task in tasks] == [0, 2, 4, 6, 8, 10]


async def test_a_long_queue_that_keeps_moving_never_times_out() -> None:
    # Forty batches of 20 ms, one at a time: the last call waits 0.8 s, four times the limit,
    # but a batch starts every 20 ms.
    run = Recorder(delay=0.02)
    coalescer = _coalescer(run, lanes=1, max_batch=5, wait=0.2)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(200)))
    assert results == [i * 2 for i in range(200)]
    assert len(run.batches) == 40


def test_a_coalescer_needs_a_lane_and_a_batch_size() -> None:
    with pytest.raises(ValueError):
        Coalescer("test", Recorder(), lanes=0, max_batch=1, wait_timeout=1)
    with pytest.raises(ValueError):
        Coalescer("test", Recorder(), lanes=1, max_batch=0, wait_timeout=1)
