"""Bulk lookups, key prefixes, value filters, facets, and the sync runner."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from pepperpy_pg_memory import (
    ArrayPattern,
    HashingEmbedder,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.runner import BackgroundStorage, LoopThread


async def test_retrieve_many_returns_live_owned_entries(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("a", "x", scope=MemoryScope.USER, scope_id="u1")
    await storage.store("b", "y", scope=MemoryScope.USER, scope_id="u2")
    found = await storage.retrieve_many(["a", "b", "missing", "a"])
    assert sorted(found) == ["a", "b"]
    mine = await storage.retrieve_many(["a", "b"], scope=MemoryScope.USER, scope_id="u1")
    assert list(mine) == ["a"]
    assert await storage.retrieve_many([]) == {}


async def test_list_and_scan_name_keys(storage: PostgresStorage[str, Any]) -> None:
    for key, scope_id in (("a", "u1"), ("b", "u1"), ("c", "u1"), ("a", "u2")):
        await storage.store(key, f"{key} of {scope_id}", scope=MemoryScope.USER, scope_id=scope_id)
    listed = await storage.list(keys=["c", "a", "zz"], scope=MemoryScope.USER, scope_id="u1")
    assert sorted(entry.value for entry in listed) == ["a of u1", "c of u1"]
    anyone = await storage.list(keys=["a"], order_by="key")
    assert sorted(entry.scope_id for entry in anyone) == ["u1", "u2"]
    assert await storage.list(keys=[]) == []
    scanned = [(e.scope_id, e.key) async for e in storage.scan(keys=["c", "a"])]
    assert scanned == [("u1", "a"), ("u1", "c"), ("u2", "a")]  # owner, then key


async def test_key_prefix_and_value_filter(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("ns/a/1", {"content": "one", "rank": 1})
    await storage.store("ns/a/2", {"content": "two", "rank": 2})
    await storage.store("ns/b/1", {"content": "three", "rank": 3})
    assert await storage.count(key_prefix="ns/a/") == 2
    assert [
        e.key
        for e in await storage.list(
            value_filter={"rank": {"$gte": 2}}, order_by="key", descending=False
        )
    ] == ["ns/a/2", "ns/b/1"]
    hits = await storage.search(
        MemoryQuery(query="two", index_type=MemoryIndex.CONTEXTUAL, key_prefix="ns/a/")
    )
    assert [h.entry.key for h in hits] == ["ns/a/2"]
    assert await storage.delete_many(key_prefix="ns/a/") == 2
    assert await storage.count() == 1
    with pytest.raises(MemoryValidationError, match="value_filter must be a mapping"):
        await storage.count(value_filter=["rank"])  # type: ignore[arg-type]


async def test_distinct_metadata_counts_values(storage: PostgresStorage[str, Any]) -> None:
    await storage.store_many(
        {"key": f"k{i}", "value": "x", "metadata": {"topic": ["a", "b", "c"][i % 3]}}
        for i in range(7)
    )
    await storage.store("nested", "x", metadata={"user": {"plan": "pro"}})
    assert await storage.distinct_metadata("topic") == [("a", 3), ("b", 2), ("c", 2)]
    assert await storage.distinct_metadata("user.plan") == [("pro", 1)]
    with pytest.raises(MemoryValidationError, match="invalid filter key"):
        await storage.distinct_metadata("a'); DROP TABLE x;--")


async def test_semantic_search_can_return_embeddings(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("k", "some words", embedding=[0.5] * 64)
    hits = await storage.search(MemoryQuery(query="some words", include_embedding=True))
    assert hits[0].entry.embedding == pytest.approx([0.5] * 64)
    with pytest.raises(MemoryValidationError, match="only available for SEMANTIC"):
        MemoryQuery(query="x", index_type=MemoryIndex.HYBRID, include_embedding=True)


def test_loop_thread_runs_coroutines_from_sync_code() -> None:
    runner = LoopThread()
    try:

        async def where() -> str:
            return threading.current_thread().name

        assert runner.run(where()) == "pepperpy-memory-loop"
    finally:
        runner.close()


async def test_background_storage_sync_calls_work_inside_a_running_loop(
    config: PostgresConfig,
) -> None:
    # As in a Jupyter cell: a synchronous call made while this test's loop is running.
    handle = BackgroundStorage.create(config, HashingEmbedder(16))
    try:
        handle.call(lambda s: s.store("k", "stored synchronously"))
        assert handle.call(lambda s: s.retrieve("k")).value == "stored synchronously"
        # and asynchronously from this (different) loop
        entry = await handle.acall(lambda s: s.retrieve("k"))
        assert entry.value == "stored synchronously"
        results = await asyncio.gather(
            *(handle.acall(lambda s, i=i: s.store(f"c{i}", "x")) for i in range(10))
        )
        assert len(results) == 10
    finally:
        handle.close()


async def test_sync_call_on_the_stores_own_loop_is_refused(config: PostgresConfig) -> None:
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        handle = BackgroundStorage.share(store)
        with pytest.raises(RuntimeError, match="await the async method"):
            handle.call(lambda s: s.count())
        assert await handle.acall(lambda s: s.count()) == 0
        handle.close()  # not owned: the store stays open
        assert store.started


@pytest.mark.parametrize(
    "order_by, descending",
    [("created_at", True), ("updated_at", False), ("key", False), ("key", True)],
)
async def test_list_pages_by_keyset_match_one_long_list(
    storage: PostgresStorage[str, Any], order_by: Any, descending: bool
) -> None:
    # Keys repeat across owners and created_at values tie within a batch: the position must
    # include the whole identity for pages neither to skip nor to repeat a memory.
    await storage.store_many(
        {"key": f"k{n % 7}", "value": n, "scope": "user", "scope_id": f"u{n // 7}"}
        for n in range(23)
    )
    whole = await storage.list(order_by=order_by, descending=descending, limit=100)
    pages: list[Any] = []
    while True:
        page = await storage.list(
            order_by=order_by,
            descending=descending,
            limit=4,
            after=pages[-1] if pages else None,
        )
        pages += page
        if len(page) < 4:
            break
    assert [(e.scope_id, e.key) for e in pages] == [(e.scope_id, e.key) for e in whole]
    assert len(pages) == 23


async def test_distinct_metadata_arrays_match_cut_order_and_page_in_sql(
    storage: PostgresStorage[str, Any],
) -> None:
    paths = [
        ["users", "ana", "prefs"],
        ["users", "ana", "facts"],
        ["users", "Zoë", "prefs"],
        ["users", "élodie", "prefs"],
        ["users", "bruno"],
        ["docs", "v1", "prefs"],
    ]
    await storage.store_many(
        {"key": f"k{n}", "value": "x", "metadata": {"ns": path}} for n, path in enumerate(paths)
    )
    await storage.store("other", "x", metadata={"ns": "not an array"})

    async def arrays(**options: Any) -> list[list[str]]:
        return await storage.distinct_metadata_arrays("ns", **options)

    # Element-wise code point order, as Python sorts tuples.
    assert await arrays() == sorted(paths)
    users_prefs = [ArrayPattern(("users", None, "prefs"))]
    assert await arrays(patterns=users_prefs) == sorted(
        p for p in paths if p[0] == "users" and p[2:] == ["prefs"]
    )
    assert await arrays(patterns=[ArrayPattern(("prefs",), at="end")]) == sorted(
        p for p in paths if p[-1] == "prefs"
    )
    assert await arrays(depth=2) == [list(t) for t in sorted({tuple(p[:2]) for p in paths})]
    assert (
        await arrays(depth=2, limit=2, offset=1)
        == [list(t) for t in sorted({tuple(p[:2]) for p in paths})][1:3]
    )
