"""store_many: batched embedding, one transaction, last value wins."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import numpy as np
import pytest

from helpers import CountingEmbedder, FailingEmbedder
from pepperpy_pg_memory import (
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    MemoryValidationError,
    PostgresStorage,
)
from pepperpy_pg_memory.operations.started import Started


async def test_store_many_embeds_in_batches_once_per_distinct_text(make_config: Any) -> None:
    embedder = CountingEmbedder(32)
    config = make_config(embedding_batch_size=10)
    progress: list[tuple[int, int]] = []
    async with PostgresStorage[str, Any](config, embedder) as store:
        items = [{"key": f"k{i}", "value": f"text {i % 25}"} for i in range(100)]
        assert await store.store_many(items, progress=lambda d, t: progress.append((d, t))) == 100
        assert await store.count() == 100
        assert sorted(embedder.embedded_texts) == sorted(f"text {i}" for i in range(25))
        assert [len(batch) for batch in embedder.batches] == [10, 10, 5]
        assert progress == [(10, 25), (20, 25), (25, 25)]
        # Storing the same texts again reuses the vectors (cache and database), embeds nothing.
        embedder.batches.clear()
        store.embedding_cache.clear()
        await store.store_many(items)
        assert embedder.batches == []


async def test_store_many_defaults_and_per_item_overrides(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store_many(
        [
            ("plain", "uses the call's defaults"),
            {
                "key": "own",
                "value": "overrides",
                "type": "episodic",
                "scope": "user",
                "scope_id": "u9",
                "metadata": {"x": 1},
                "ttl": "never",
            },
        ],
        type=MemoryType.SHORT_TERM,
        scope=MemoryScope.SESSION,
        scope_id="s1",
    )
    plain = await storage.retrieve("plain")
    own = await storage.retrieve("own")
    assert (plain.type, plain.scope, plain.scope_id) == (
        MemoryType.SHORT_TERM,
        MemoryScope.SESSION,
        "s1",
    )
    assert plain.expires_at is not None
    assert (own.type, own.scope, own.scope_id, own.metadata, own.expires_at) == (
        MemoryType.EPISODIC,
        MemoryScope.USER,
        "u9",
        {"x": 1},
        None,
    )


async def test_duplicate_keys_in_one_batch_keep_the_last_value(
    storage: PostgresStorage[str, Any],
) -> None:
    assert await storage.store_many([("k", "first"), ("other", "x"), ("k", "last")]) == 2
    assert (await storage.retrieve("k")).value == "last"


async def test_store_many_upserts_and_keeps_created_at(storage: PostgresStorage[str, Any]) -> None:
    created = (await storage.store("k", "v1")).created_at
    await storage.store_many([("k", "v2"), ("n", "new")])
    entry = await storage.retrieve("k")
    assert entry.value == "v2" and entry.created_at == created


async def test_a_bad_item_in_the_middle_stores_nothing(storage: PostgresStorage[str, Any]) -> None:
    items: list[Any] = [("a", "fine"), ("b", {"bad": {1, 2}}), ("c", "fine")]
    with pytest.raises(MemoryValidationError, match="item 1"):
        await storage.store_many(items)
    with pytest.raises(MemoryValidationError, match="unknown fields"):
        await storage.store_many([{"key": "a", "value": "x", "colour": "red"}])
    with pytest.raises(MemoryValidationError, match="needs both"):
        await storage.store_many([{"key": "a"}])
    assert await storage.count() == 0


async def test_the_collector_is_paused_only_while_a_batch_is_prepared(
    storage: PostgresStorage[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Preparing a batch pauses Python's cyclic collector (gc_pause): it is on again after
    # the call, however it ends, and a caller's own pause is left alone.
    seen: list[bool] = []
    prepare = Started.prepare

    def noting(self: Started[Any], *args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(Started, "prepare", noting)
    await storage.store_many([{"key": f"k{i}", "value": f"note {i}"} for i in range(40)])
    assert seen and not any(seen) and gc.isenabled()
    with pytest.raises(MemoryValidationError):
        await storage.store_many([{"key": "a", "value": "fine"}, {"key": "b", "value": None}])
    assert gc.isenabled()
    gc.disable()
    try:
        await storage.store_many([{"key": "c", "value": "more"}])
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_embedder_failure_midway_stores_nothing(make_config: Any) -> None:
    config = make_config(embedding_batch_size=5)
    async with PostgresStorage[str, Any](config, FailingEmbedder(16, fail_on_call=3)) as store:
        with pytest.raises(RuntimeError, match="model crashed"):
            await store.store_many((f"k{i}", f"text {i}") for i in range(20))
        assert await store.count() == 0


async def test_database_failure_in_the_batch_rolls_everything_back(
    storage: PostgresStorage[str, Any], raw_conn: Any
) -> None:
    await storage.store("existing", "untouched")
    table = f'"{storage.config.schema_name}"."{storage.config.table}"'
    # A constraint the server enforces only at write time: the whole batch must roll back.
    await raw_conn.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT no_poison CHECK (content <> 'poison')"
    )
    items = [(f"k{i}", "poison" if i == 50 else f"ok {i}") for i in range(100)]
    items.append(("existing", "changed"))
    with pytest.raises(MemoryValidationError):
        await storage.store_many(items)
    assert await storage.count() == 1
    assert (await storage.retrieve("existing")).value == "untouched"


async def test_store_many_of_nothing(storage: PostgresStorage[str, Any]) -> None:
    assert await storage.store_many([]) == 0


async def test_large_batch_is_searchable(storage: PostgresStorage[str, Any]) -> None:
    vectors = np.random.default_rng(7).standard_normal((3_000, 64)).astype(np.float32)
    await storage.store_many(
        {
            "key": f"k{i}",
            "value": {"content": f"record {i}", "n": i},
            "metadata": {"n": i},
            "embedding": vectors[i],
        }
        for i in range(3_000)
    )
    assert await storage.count() == 3_000
    hits = await storage.search(
        MemoryQuery(query="record 1234", index_type=MemoryIndex.CONTEXTUAL, limit=1)
    )
    assert hits[0].entry.key == "k1234"
    nearest = await storage.search(MemoryQuery(embedding=vectors[2999].tolist(), limit=10))
    assert nearest[0].entry.key == "k2999"
    assert nearest[0].score == pytest.approx(1.0, abs=1e-5)


async def _has_vector_index(conn: Any, config: Any) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = $1 AND indexname = $2)",
            config.schema_name,
            f"{config.table}_embedding_idx",
        )
    )


async def test_bulk_load_rebuilds_the_vector_index_atomically(
    make_config: Any, raw_conn: Any
) -> None:
    from pepperpy_pg_memory import HashingEmbedder

    config = make_config(bulk_index_rebuild_rows=100)
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store_many((f"k{i}", f"bulk text {i}") for i in range(300))
        assert await _has_vector_index(raw_conn, config)
        await raw_conn.execute("SET enable_seqscan = off")  # 300 rows: make the index the plan
        plan = await raw_conn.fetch(
            f'EXPLAIN SELECT key FROM "{config.schema_name}"."{config.table}" '
            "ORDER BY embedding <=> (SELECT embedding FROM "
            f'"{config.schema_name}"."{config.table}" LIMIT 1) LIMIT 5'
        )
        assert "embedding_idx" in "\n".join(row[0] for row in plan)
        await raw_conn.execute("RESET enable_seqscan")
        entry = await store.retrieve("k123", include_embedding=True)
        assert entry.embedding is not None
        hits = await store.search(MemoryQuery(embedding=entry.embedding, limit=1))
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)

        table = f'"{config.schema_name}"."{config.table}"'
        await raw_conn.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT no_bad CHECK (content <> 'bad')"
        )
        items = [(f"n{i}", "bad" if i == 399 else f"more {i}") for i in range(400)]
        with pytest.raises(MemoryValidationError):
            await store.store_many(items)
        assert await store.count() == 300
        assert await _has_vector_index(raw_conn, config)  # the drop was rolled back too


async def test_bulk_work_gets_the_maintenance_timeout_not_the_statement_one(
    make_config: Any, raw_conn: Any
) -> None:
    """A bulk load or an index rebuild may legitimately outlast ``command_timeout`` (an HNSW
    build over 100k rows takes tens of seconds); a single write may not. A lock held by another
    session makes both wait the same, deterministic time."""
    from pepperpy_pg_memory import HashingEmbedder, MemoryIndex, MemoryTimeoutError

    config = make_config(command_timeout=0.5, maintenance_timeout=30)
    table = f'"{config.schema_name}"."{config.table}"'
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store("seed", "seed text")

        async def hold_lock(seconds: float) -> asyncio.Task[None]:
            """Lock the table from another session for ``seconds``; returns once it is held."""
            held = asyncio.Event()

            async def hold() -> None:
                async with raw_conn.transaction():
                    await raw_conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                    held.set()
                    await asyncio.sleep(seconds)

            task = asyncio.create_task(hold())
            await held.wait()
            return task

        holder = await hold_lock(3.0)
        with pytest.raises(MemoryTimeoutError):
            await store.store_many((f"few{i}", f"text {i}") for i in range(10))
        stored = await store.store_many((f"many{i}", f"text {i}") for i in range(1_000))
        await holder
        assert stored == 1_000
        assert await store.count() == 1_001  # the timed-out batch left nothing behind

        holder = await hold_lock(3.0)
        assert await store.reindex(MemoryIndex.CONTEXTUAL) == 1_001
        await holder

        holder = await hold_lock(3.0)
        assert await store.delete_many(key_prefix="many") == 1_000
        assert await store.clear() == 1
        await holder

    # ... and the maintenance timeout still bounds it.
    strict = config.model_copy(update={"command_timeout": 30, "maintenance_timeout": 0.5})
    async with PostgresStorage[str, Any](strict, HashingEmbedder(32)) as store:
        holder = await hold_lock(3.0)
        with pytest.raises(MemoryTimeoutError):
            await store.reindex(MemoryIndex.CONTEXTUAL)
        await holder
