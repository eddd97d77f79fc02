"""Running the async store from synchronous code, from any thread and any event loop.

A :class:`LoopThread` is an event loop that runs forever in a daemon thread. The store lives
on that loop; callers hand it coroutines. A synchronous call blocks only its own thread while
the work runs on the store's loop, so it works inside a running loop too (a Jupyter cell, a
pytest-asyncio test) without deadlock. An ``async`` caller on another loop awaits the result
without blocking its loop. This is the whole sync API: a thin shell over the async core.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from .config import PostgresConfig
from .storage import PostgresStorage

__all__ = [
    "LoopThread",
    "default_loop_thread",
    "BackgroundStorage",
    "run_on",
    "run_on_async",
    "running_loop",
]

T = TypeVar("T")
K = TypeVar("K", bound=str)

EXIT_TIMEOUT = 4.0
"""Seconds a store left open may take to close at interpreter exit."""

logger = logging.getLogger(__name__)
V = TypeVar("V")


class LoopThread:
    """An asyncio event loop running in a daemon thread of its own.

    Examples:
        >>> runner = LoopThread()
        >>> async def answer() -> int:
        ...     return 42
        >>> runner.run(answer())
        42
        >>> runner.close()
    """

    def __init__(self, name: str = "pepperpy-memory-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result (blocking this thread)."""
        return run_on(self.loop, coroutine)

    async def run_async(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` on the loop from any other loop (or directly if already on it)."""
        return await run_on_async(self.loop, coroutine)

    def close(self) -> None:
        """Stop the loop and its thread."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


_default: LoopThread | None = None
_default_lock = threading.Lock()


def default_loop_thread() -> LoopThread:
    """The process-wide loop thread that stores created without one share."""
    global _default
    with _default_lock:
        if _default is None or not _default.running:
            _default = LoopThread()
        return _default


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop the caller runs on, None outside async code."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on ``loop`` (running in another thread) and wait for the result."""
    if running_loop() is loop:
        coroutine.close()
        raise RuntimeError(
            "a synchronous method was called on the event loop the store runs on, which would "
            "wait for itself: await the async method instead (e.g. aadd_texts, asearch)"
        )
    if not loop.is_running():
        coroutine.close()
        raise RuntimeError("the event loop this store was started on is no longer running")
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


async def run_on_async(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Await ``coroutine`` on ``loop`` from whichever loop the caller is on."""
    if running_loop() is loop:
        return await coroutine
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))


class BackgroundStorage(Generic[K, V]):
    """A started :class:`PostgresStorage`, callable from any thread and any event loop.

    ``call(lambda s: s.search(q))`` runs synchronously; ``await acall(...)`` asynchronously.
    Work always runs on the loop the store was started on (its pool belongs to that loop).
    Framework adapters hold one of these, so every adapter method works the same way from a
    script, a notebook or an async application.
    """

    def __init__(self, storage: PostgresStorage[K, V], *, owned: bool) -> None:
        if storage.loop is None:
            raise RuntimeError("start the storage before wrapping it (or use create())")
        self.storage = storage
        self.loop = storage.loop
        self.owned = owned
        if owned:
            # Scripts and notebooks often never close what they open. Registered after the
            # store started (so after the embedded server's own exit handler), this runs
            # first at exit: the pool closes while the server is still up, instead of
            # reconnecting to a server that is shutting down and printing a traceback a try.
            atexit.register(self._close_at_exit)

    @classmethod
    def create(
        cls, config: PostgresConfig | None = None, embedder: Any = None, **storage_kwargs: Any
    ) -> BackgroundStorage[Any, Any]:
        """Build a store and start it on the process-wide loop thread (synchronously)."""
        storage = default_loop_thread().run(_started(config, embedder, storage_kwargs))
        return BackgroundStorage(storage, owned=True)

    @classmethod
    async def acreate(
        cls, config: PostgresConfig | None = None, embedder: Any = None, **storage_kwargs: Any
    ) -> BackgroundStorage[Any, Any]:
        """:meth:`create` for async callers: their loop keeps running while the store starts."""
        runner = default_loop_thread()
        storage = await runner.run_async(_started(config, embedder, storage_kwargs))
        return BackgroundStorage(storage, owned=True)

    @classmethod
    def share(cls, storage: PostgresStorage[K, V]) -> BackgroundStorage[K, V]:
        """Wrap a store the caller owns; it is started on the loop thread if it is not yet."""
        if storage.loop is None:
            default_loop_thread().run(storage.start())
        return BackgroundStorage(storage, owned=False)

    def call(self, work: Callable[[PostgresStorage[K, V]], Awaitable[T]]) -> T:
        """Run ``work(storage)`` on the store's loop and return its result."""
        return run_on(self.loop, _apply(work, self.storage))

    async def acall(self, work: Callable[[PostgresStorage[K, V]], Awaitable[T]]) -> T:
        """Await ``work(storage)`` on the store's loop from any loop."""
        return await run_on_async(self.loop, _apply(work, self.storage))

    def close(self) -> None:
        """Close the store if this handle owns it."""
        if self.owned:
            atexit.unregister(self._close_at_exit)
            if self.loop.is_running():
                run_on(self.loop, self.storage.close())

    async def aclose(self) -> None:
        if self.owned:
            atexit.unregister(self._close_at_exit)
            await run_on_async(self.loop, self.storage.close())

    def _close_at_exit(self) -> None:
        if not self.loop.is_running() or self.storage.loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.storage.close(), self.loop)
        try:
            future.result(timeout=EXIT_TIMEOUT)
        except Exception as exc:  # exiting anyway: never turn exit into a traceback
            logger.debug("closing a store at exit failed: %r", exc)


async def _started(
    config: PostgresConfig | None, embedder: Any, storage_kwargs: dict[str, Any]
) -> PostgresStorage[Any, Any]:
    storage = PostgresStorage[Any, Any](config, embedder, **storage_kwargs)
    await storage.start()
    return storage


async def _apply(work: Callable[[Any], Awaitable[T]], storage: Any) -> T:
    return await work(storage)
