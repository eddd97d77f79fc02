"""Bursts of concurrent calls on a small pool: gathered into batches, none failing for want
of a connection, each call with its own outcome (timings are in benchmarks/bursts.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import CountingEmbedder, table_locked
from langgraph_pepperpy import PepperpyStore
from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryQuery,
    MemoryScope,
    MemoryTimeoutError,
    MemoryValidationError,
    PostgresStorage,
)

# A pool this small, with a timeout this short, fails a burst of one-call-one-connection
# operations: the last in the queue waits for thousands of round trips before it.
# Two connections for bursts of thousands of calls; the wait for one is generous, so that a
# loaded machine makes these tests slower, never failed.
SMALL_POOL = {"max_size": 2, "pool_timeout": 60.0}


class PoisonEmbedder(HashingEmbedder):
    """Refuses any batch containing the word "poison", as a model may reject one input."""

    async def embed_documents(self, texts: list[str]) -> Any:
        if any("poison" in text for text in texts):
            raise RuntimeError("the model cannot embed this text")
        return await super().embed_documents(texts)


async def test_thousands_of_concurrent_stores_on_two_connections(make_config: Any) -> None:
    embedder = CountingEmbedder(32)
    async with PostgresStorage[str, Any](make_config(**SMALL_POOL), embedder) as storage:
        entries = await asyncio.gather(
            *(
                storage.store(
                    f"k{i}", {"text": f"note {i}"}, scope=MemoryScope.USER, scope_id=f"u{i % 7}"
                )
                for i in range(3000)
            )
        )
        assert [e.key for e in entries] == [f"k{i}" for i in range(3000)]
        assert all(e.created_at is not None and e.updated_at is not None for e in entries)
        assert await storage.count() == 3000
        # Written in batches: the model saw far fewer calls than there were stores.
        assert len(embedder.batches) < 300
        back = await storage.retrieve("k1234", scope=MemoryScope.USER, scope_id="u2")
        assert back.value == {"text": "note 1234"}
        # 32-dimensional hashing vectors collide: several of u2's 429 notes have exactly
        # the vector of "note 1234", and which of those exact ties the graph yields first is
        # arbitrary. Every tie is found with room for them all.
        hits = await storage.search(
            MemoryQuery(query="note 1234", scope=MemoryScope.USER, scope_id="u2", limit=30)
        )
        assert "k1234" in [hit.entry.key for hit in hits]
        assert hits[0].score == pytest.approx(1.0)


async def test_a_write_that_fails_in_a_burst_fails_alone(make_config: Any) -> None:
    async with PostgresStorage[str, Any](make_config(), PoisonEmbedder(32)) as storage:
        texts = [f"note {i}" for i in range(40)]
        texts[17] = "poison pill"
        outcomes = await asyncio.gather(
            *(storage.store(f"k{i}", text) for i, text in enumerate(texts)),
            return_exceptions=True,
        )
        failed = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
        assert failed == [17]
        assert "cannot embed" in str(outcomes[17])
        assert await storage.count() == 39
        assert not await storage.exists("k17")


async def test_a_burst_of_invalid_and_valid_calls(make_config: Any) -> None:
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(32)) as storage:
        outcomes = await asyncio.gather(
            storage.store("ok-1", "fine"),
            storage.store("", "an empty key is refused before queueing"),
            storage.store("ok-2", "fine too"),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], MemoryValidationError)
        assert not isinstance(outcomes[0], BaseException)
        assert not isinstance(outcomes[2], BaseException)
        assert await storage.count() == 2


async def test_one_key_written_many_times_at_once_ends_with_the_last_call(
    make_config: Any,
) -> None:
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(32)) as storage:
        entries = await asyncio.gather(*(storage.store("shared", f"v{n}") for n in range(30)))
        final = await storage.retrieve("shared")
        assert final.value == "v29"
        # Every call saw its own write land, in call order, as one-by-one calls would.
        moments = [e.updated_at for e in entries]
        assert moments == sorted(moments) and len(set(moments)) == 30
        assert final.updated_at == entries[-1].updated_at


async def test_stores_queued_behind_a_locked_table_time_out_within_pool_timeout(
    make_config: Any, pg_dsn: str
) -> None:
    config = make_config(max_size=2, pool_timeout=0.5, command_timeout=1.0)
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as storage:
        await storage.store("k", "v")
        async with table_locked(pg_dsn, f'"{config.schema_name}"."{config.table}"'):
            started = asyncio.get_running_loop().time()
            outcomes = await asyncio.gather(
                *(storage.store(f"k{i}", f"v{i}") for i in range(20)), return_exceptions=True
            )
            elapsed = asyncio.get_running_loop().time() - started
        assert all(isinstance(o, MemoryTimeoutError) for o in outcomes), outcomes
        # Timed out, not held until the lock went (a generous bound: a loaded machine is slow).
        assert elapsed < 30
        # Nothing was half-written, and the store serves again once the lock is gone.
        assert await storage.count() == 1
        await asyncio.gather(*(storage.store(f"k{i}", f"v{i}") for i in range(20)))
        assert await storage.count() == 21


async def test_close_waits_for_queued_stores(make_config: Any) -> None:
    storage = PostgresStorage[str, Any](make_config(), HashingEmbedder(16))
    await storage.start()
    tasks = [asyncio.create_task(storage.store(f"k{i}", f"v{i}")) for i in range(200)]
    await asyncio.sleep(0)
    await storage.close()
    assert all(not isinstance(t.exception(), BaseException) for t in tasks)
    async with PostgresStorage[str, Any](storage.config, HashingEmbedder(16)) as again:
        assert await again.count() == 200


# --- LangGraph -------------------------------------------------------------------------------
@pytest.fixture
def small_store(make_config: Any) -> Iterator[PepperpyStore]:
    store = PepperpyStore.create(make_config(**SMALL_POOL), HashingEmbedder(256))
    yield store
    store.close()


def _text(i: int) -> str:
    # Words of its own. With "note number {i}" two of three hashed words were shared, all
    # 3,000 vectors sat in one narrow cone, and in full-suite runs searches sometimes missed
    # their exact match (once 193 of 300), presumably an HNSW graph grown by concurrent
    # inserts over near-identical vectors: never reproduced alone, not proven.
    return f"item{i} code{i * 7919 % 100003} tag{i * 104729 % 99991}"


async def test_langgraph_bursts_of_puts_gets_and_searches(small_store: PepperpyStore) -> None:
    count = 3000
    namespaces = [("users", f"u{i % 20}", "notes") for i in range(count)]
    await asyncio.gather(
        *(small_store.aput(namespaces[i], f"k{i}", {"text": _text(i)}) for i in range(count))
    )
    items = await asyncio.gather(*(small_store.aget(namespaces[i], f"k{i}") for i in range(count)))
    assert [item.value["text"] if item else None for item in items] == [
        _text(i) for i in range(count)
    ]
    assert {item.namespace for item in items if item} == set(namespaces)
    hits = await asyncio.gather(
        *(small_store.asearch(namespaces[i], query=_text(i), limit=3) for i in range(300))
    )
    # Every item is found by its own text: none lost its vector in a burst.
    missed = [i for i, found in enumerate(hits) if f"k{i}" not in [hit.key for hit in found]]
    assert missed == []
    # Deletes in a burst too.
    await asyncio.gather(*(small_store.adelete(namespaces[i], f"k{i}") for i in range(0, count, 2)))
    left = await asyncio.gather(*(small_store.aget(namespaces[i], f"k{i}") for i in range(count)))
    assert [item is not None for item in left] == [i % 2 == 1 for i in range(count)]


async def test_langgraph_one_bad_call_in_a_burst_fails_alone(small_store: PepperpyStore) -> None:
    too_long = "k" * 3000  # over the key limit: refused by the core, inside the batch
    outcomes = await asyncio.gather(
        *(
            small_store.aput(("users", "ana"), too_long if i == 5 else f"k{i}", {"text": "x"})
            for i in range(20)
        ),
        return_exceptions=True,
    )
    assert [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)] == [5]
    assert isinstance(outcomes[5], MemoryValidationError)
    found = await asyncio.gather(*(small_store.aget(("users", "ana"), f"k{i}") for i in range(20)))
    assert [item is not None for item in found] == [i != 5 for i in range(20)]


def test_langgraph_sync_calls_from_many_threads(small_store: PepperpyStore) -> None:
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            for i in range(50):
                namespace = ("users", f"t{number}")
                small_store.put(namespace, f"k{i}", {"text": f"thread {number} note {i}"})
                item = small_store.get(namespace, f"k{i}")
                assert item is not None and item.value["text"] == f"thread {number} note {i}"
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    namespaces = small_store.list_namespaces(prefix=("users",))
    assert len(namespaces) == 8
    assert all(len(small_store.search(ns, limit=100)) == 50 for ns in namespaces)
