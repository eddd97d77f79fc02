"""``MemorySearchResults``: what ``search()`` and ``similar()`` return before anything runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from .models import MemorySearchResult

__all__ = ["MemorySearchResults"]

V = TypeVar("V")


class MemorySearchResults(Coroutine[Any, Any, "list[MemorySearchResult[V]]"], Generic[V]):
    """Search results: iterate with ``async for``, or ``await`` for a list.

    It is also a coroutine, so ``asyncio.create_task(storage.search(query))`` and
    ``asyncio.gather`` take it as they would an ``async def`` call. The query runs when it is
    first awaited, stepped or iterated; an object that is never used runs nothing.
    """

    def __init__(
        self, fetch: Callable[[], Coroutine[Any, Any, list[MemorySearchResult[V]]]]
    ) -> None:
        self._fetch = fetch
        self._running: Coroutine[Any, Any, list[MemorySearchResult[V]]] | None = None
        self._results: list[MemorySearchResult[V]] | None = None

    def _coroutine(self) -> Coroutine[Any, Any, list[MemorySearchResult[V]]]:
        if self._running is None:
            self._running = self._run_once()
        return self._running

    async def _run_once(self) -> list[MemorySearchResult[V]]:
        self._results = await self._fetch()
        return self._results

    def __await__(self) -> Generator[Any, None, list[MemorySearchResult[V]]]:
        return self._coroutine().__await__()

    # The coroutine protocol, which asyncio's tasks drive directly.
    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._coroutine().throw(typ)
        return self._coroutine().throw(typ, val, tb)  # pragma: no cover - legacy signature

    def close(self) -> None:
        if self._running is not None:
            self._running.close()

    async def __aiter__(self) -> AsyncIterator[MemorySearchResult[V]]:
        # The query runs once: iterating after an await reads the results it already has.
        results = self._results if self._results is not None else await self
        for result in results:
            yield result
