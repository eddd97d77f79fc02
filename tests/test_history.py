"""Memory over time: every change is a version in a history table written in the change's own
transaction; facts can stop being true (supersede, invalidate) and stay recallable; reads can
look at the store as it stood at any moment."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pepperpy_pg_memory import (
    AmbiguousKeyError,
    HashingEmbedder,
    MemoryConfigurationError,
    MemoryIndex,
    MemoryNotFoundError,
    MemoryQuery,
    MemoryScope,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
)

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}
BRUNO = {"scope": MemoryScope.USER, "scope_id": "bruno"}


@pytest.fixture
async def storage(config: PostgresConfig) -> Any:
    async with PostgresStorage[str, Any](config, HashingEmbedder(256)) as store:
        yield store


def _history_table(config: PostgresConfig) -> str:
    return f'"{config.schema_name}"."{config.table}_history"'


async def _server_now(storage: PostgresStorage[str, Any]) -> datetime:
    # Moments compared with what the server recorded come from the server's clock.
    async with storage.database.pool.acquire() as conn:
        moment: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return moment


async def test_every_change_is_a_version_newest_first(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("city", "Ana lives in Lisbon", **ANA, actor="agent", reason="told")
    await storage.store("city", "Ana lives in Porto", **ANA, metadata={"source": "chat"})
    assert await storage.delete("city", **ANA, actor="ana", reason="asked to forget")

    versions = await storage.history("city", **ANA)
    assert [(v.version, v.operation) for v in versions] == [
        (3, "delete"),
        (2, "update"),
        (1, "create"),
    ]
    assert [v.value for v in versions] == [
        "Ana lives in Porto",
        "Ana lives in Porto",
        "Ana lives in Lisbon",
    ]
    assert (versions[2].actor, versions[2].reason) == ("agent", "told")
    assert (versions[1].actor, versions[1].reason) == (None, None)
    assert (versions[0].actor, versions[0].reason) == ("ana", "asked to forget")
    assert versions[1].metadata == {"source": "chat"}
    assert versions[0].at >= versions[1].at >= versions[2].at
    assert await storage.history("city", **ANA, limit=1) == versions[:1]
    # Versions carry their embedding, so that semantic recall as of a moment is possible.
    with_vectors = await storage.history("city", **ANA, include_embedding=True)
    assert all(v.embedding is not None and len(v.embedding) == 256 for v in with_vectors)


async def _recorded_vectors(
    conn: asyncpg.Connection, config: PostgresConfig, key: str
) -> dict[int, str | None]:
    """Each recorded version of ``key`` (Ana's) → the vector its history row holds."""
    rows = await conn.fetch(
        f"SELECT version, embedding::text AS vector FROM {_history_table(config)} "
        "WHERE scope = 'user' AND scope_id = 'ana' AND key = $1 ORDER BY version",
        key,
    )
    return {row["version"]: row["vector"] for row in rows}


async def _row_vector(conn: asyncpg.Connection, config: PostgresConfig, key: str) -> str:
    vector: str = await conn.fetchval(
        f'SELECT embedding::text FROM "{config.schema_name}"."{config.table}" '
        "WHERE scope = 'user' AND scope_id = 'ana' AND key = $1",
        key,
    )
    return vector


@pytest.mark.parametrize("writes", ["one at a time", "in batches"])
async def test_a_current_versions_vector_is_kept_once_and_recorded_when_replaced(
    storage: PostgresStorage[str, Any],
    config: PostgresConfig,
    raw_conn: asyncpg.Connection,
    writes: str,
) -> None:
    # The memory row holds the current version's vector; its history row gets it when the
    # version is replaced: by the row triggers (store) or by a bulk merge recording its
    # own versions (a batch past SMALL_BATCH_ROWS).
    keys = [f"k{i}" for i in range(40)]

    async def write(text: str) -> None:
        if writes == "one at a time":
            await storage.store("k0", f"{text} 0", **ANA)
        else:
            await storage.store_many(
                [{"key": key, "value": f"{text} {i}"} for i, key in enumerate(keys)], **ANA
            )

    await write("green tea in the morning")
    first = await _row_vector(raw_conn, config, "k0")
    assert await _recorded_vectors(raw_conn, config, "k0") == {1: None}
    # Read through the store, the current version has its vector: the row's.
    [current] = await storage.history("k0", **ANA, include_embedding=True)
    assert current.version == 1 and current.embedding is not None
    assert current.embedding == pytest.approx(json.loads(first))

    await write("black coffee at noon")
    second = await _row_vector(raw_conn, config, "k0")
    assert second != first
    assert await _recorded_vectors(raw_conn, config, "k0") == {1: first, 2: None}
    newest, oldest = await storage.history("k0", **ANA, include_embedding=True)
    assert (newest.version, oldest.version) == (2, 1)
    assert newest.embedding != oldest.embedding
    # A read as of a moment before the replacement finds the replaced version by meaning.
    replaced_at = newest.at - timedelta(microseconds=1)
    hits = await storage.search(
        MemoryQuery(query="green tea in the morning 0", as_of=replaced_at, limit=1, **ANA)
    )
    assert hits[0].entry.key == "k0" and hits[0].entry.version == 1

    assert await storage.delete("k0", **ANA)
    # The deleted version keeps the vector (as the memory was), the version it ended too.
    assert await _recorded_vectors(raw_conn, config, "k0") == {1: first, 2: second, 3: second}


async def test_a_version_replaced_by_a_writer_without_history_gets_its_vector(
    config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    async with PostgresStorage[str, Any](config, HashingEmbedder(256)) as store:
        await store.store("k", "green tea in the morning", **ANA)
    recorded = await _row_vector(raw_conn, config, "k")
    quiet = config.model_copy(update={"history": False})
    async with PostgresStorage[str, Any](quiet, HashingEmbedder(256)) as store:
        await store.store("k", "black coffee at noon", **ANA)
    # No version of its own, but the one it replaced keeps its vector.
    assert await _recorded_vectors(raw_conn, config, "k") == {1: recorded}


async def test_an_upgrade_drops_the_copies_of_current_vectors_its_history_kept(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    # Before schema 27 a current version was recorded with a copy of the row's vector; the
    # upgrade's online backfill drops the copies, and nothing a reader sees changes.
    config = make_config(background_backfill=False)
    other_tenant = config.model_copy(update={"tenant": "other"})
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store("k0", "green tea in the morning", **ANA)
        await store.store("k0", "black coffee at noon", **ANA)
        await store.store_many([{"key": f"k{i}", "value": f"note {i}"} for i in range(1, 5)], **ANA)
        await store.store("b", "Bruno plays chess", **BRUNO)
    async with PostgresStorage[str, Any](other_tenant, HashingEmbedder(64)) as store:
        await store.store("elsewhere", "the other tenant's tea", **ANA)
    table, history = f'"{config.schema_name}"."{config.table}"', _history_table(config)
    current = " AND ".join(
        f"h.{column} = m.{column}" for column in ("tenant", "scope", "scope_id", "key", "version")
    )
    await raw_conn.execute(  # as schema 26 recorded them
        f"UPDATE {history} h SET embedding = m.embedding FROM {table} m WHERE {current}"
    )
    # A recorded vector that is not the row's is not a copy: it stays.
    replaced = await raw_conn.fetchval(
        f"SELECT embedding::text FROM {history} WHERE tenant = '' AND key = 'k0' AND version = 1"
    )
    await raw_conn.execute(
        f"UPDATE {history} SET embedding = $1::vector WHERE scope_id = 'bruno'", replaced
    )
    await raw_conn.execute(
        f"UPDATE {store.layout.qualified_backfills} SET finished_at = NULL, position = NULL "
        "WHERE name = 'history_vectors'"
    )
    vectors = f"SELECT tenant, key, version, embedding::text FROM {history} ORDER BY 1, 2, 3"
    before = await raw_conn.fetch(vectors)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        assert not store.backfill_pending  # searches need nothing of it
        read_before = await store.history("k0", **ANA, include_embedding=True)
        seen: list[tuple[int, int]] = []
        assert await store.complete_backfills(progress=lambda d, t: seen.append((d, t))) == 5
        assert seen[-1] == (5, 5)
        after = {(r[0], r[1], r[2]): r[3] for r in await raw_conn.fetch(vectors)}
        for tenant, key, version, vector in before:
            dropped = tenant == "" and key != "b" and version == (2 if key == "k0" else 1)
            assert after[(tenant, key, version)] == (None if dropped else vector), (key, version)
        assert await store.history("k0", **ANA, include_embedding=True) == read_before
        hits = await store.search(MemoryQuery(embedding=read_before[0].embedding, limit=1, **ANA))
        assert hits[0].entry.key == "k0"
        # Replaced again, the version gets its vector back from the row, as any current one.
        second = await _row_vector(raw_conn, config, "k0")
        await store.store("k0", "rooibos at night", **ANA)
        assert await _recorded_vectors(raw_conn, config, "k0") == {1: replaced, 2: second, 3: None}
        assert await store.complete_backfills() == 0


async def test_the_backfill_leaves_a_version_replaced_while_it_waited_its_vector(
    make_config: Any, raw_conn: asyncpg.Connection, pg_dsn: str
) -> None:
    # The backfill's UPDATE of a current version's record can wait for a writer replacing
    # the memory; after it the record is the replaced version's, its vector the only copy.
    config = make_config(background_backfill=False)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store("k", "green tea in the morning", **ANA)
    table, history = f'"{config.schema_name}"."{config.table}"', _history_table(config)
    await raw_conn.execute(  # a copy, as schema 26 recorded it
        f"UPDATE {history} h SET embedding = m.embedding FROM {table} m "
        "WHERE (h.tenant, h.scope, h.scope_id, h.key) = (m.tenant, m.scope, m.scope_id, m.key)"
    )
    await raw_conn.execute(
        f'UPDATE "{config.schema_name}"."{config.table}_backfills" '
        "SET finished_at = NULL, position = NULL WHERE name = 'history_vectors'"
    )
    first = await _recorded_vectors(raw_conn, config, "k")
    writer = await asyncpg.connect(pg_dsn)
    try:
        async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
            replacing = writer.transaction()
            await replacing.start()
            await writer.execute(  # a writer of its own (the row triggers record it)
                f"UPDATE {table} SET value = '\"black coffee\"', content = 'black coffee', "
                "embedding = NULL, updated_at = clock_timestamp() "
                "WHERE scope = 'user' AND scope_id = 'ana' AND key = 'k'"
            )
            backfill = asyncio.create_task(store.complete_backfills())
            for _ in range(200):  # until the backfill waits for the writer's lock
                waiting = await raw_conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%history%'"
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting
            await replacing.commit()
            assert await backfill == 0
    finally:
        await writer.close()
    assert (await _recorded_vectors(raw_conn, config, "k"))[1] == first[1] is not None


async def test_the_entry_carries_its_version_and_a_deleted_key_continues_numbering(
    storage: PostgresStorage[str, Any],
) -> None:
    first = await storage.store("k", "one", **ANA)
    second = await storage.store("k", "two", **ANA)
    assert (first.version, second.version) == (1, 2)
    assert (await storage.retrieve("k", **ANA)).version == 2
    await storage.delete("k", **ANA)
    again = await storage.store("k", "three", **ANA)
    assert again.version == 4
    assert [v.version for v in await storage.history("k", **ANA)] == [4, 3, 2, 1]


async def test_history_is_per_owner(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("pref", "tea", **ANA)
    await storage.store("pref", "coffee", **BRUNO)
    await storage.store("pref", "green tea", **ANA)
    assert [v.value for v in await storage.history("pref", **ANA)] == ["green tea", "tea"]
    assert [v.value for v in await storage.history("pref", **BRUNO)] == ["coffee"]
    with pytest.raises(AmbiguousKeyError):
        await storage.history("pref")
    assert await storage.history("pref", scope="user", scope_id="carla") == []


async def test_bookkeeping_is_not_a_version(storage: PostgresStorage[str, Any]) -> None:
    stored = await storage.store("note", "remember the milk", **ANA)
    assert await storage.touch(["note"], timedelta(hours=2), **ANA) == 1
    await storage.reindex(MemoryIndex.SEMANTIC)
    entry = await storage.retrieve("note", **ANA)
    assert entry.version == 1
    assert entry.updated_at == stored.updated_at
    assert len(await storage.history("note", **ANA)) == 1


async def test_batches_and_bursts_record_versions_with_actor_and_reason(
    storage: PostgresStorage[str, Any],
) -> None:
    items = [{"key": f"m{i}", "value": f"memory {i}"} for i in range(5)]
    assert await storage.store_many(items, **ANA, actor="importer", reason="load") == 5
    # Concurrent store() calls are written together; calls with different reasons are not
    # mixed in one statement.
    await asyncio.gather(
        *(storage.store(f"m{i}", f"memory {i}, again", **ANA, reason=f"r{i}") for i in range(5))
    )
    for i in range(5):
        versions = await storage.history(f"m{i}", **ANA)
        assert [(v.operation, v.actor, v.reason) for v in versions] == [
            ("update", None, f"r{i}"),
            ("create", "importer", "load"),
        ]
    assert await storage.delete_many(keys=["m0", "m1"], **ANA, reason="cleanup") == 2
    assert (await storage.history("m0", **ANA))[0].reason == "cleanup"


async def test_concurrent_writers_make_gapless_versions(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("counter", "start", **ANA)

    async def writer(name: str) -> None:
        for i in range(50):
            await storage.store("counter", f"{name} {i}", **ANA)

    await asyncio.gather(writer("a"), writer("b"))
    versions = await storage.history("counter", **ANA)
    assert [v.version for v in versions] == list(range(101, 0, -1))
    live = await storage.retrieve("counter", **ANA)
    assert live.version == 101
    assert live.value == versions[0].value
    # Commit order: each writer's own values appear in the order it wrote them.
    for name in ("a", "b"):
        own = [int(v.value.split()[1]) for v in reversed(versions) if v.value.startswith(name)]
        assert own == list(range(50))


async def test_a_version_is_never_dated_before_the_one_it_follows(
    storage: PostgresStorage[str, Any], config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    # On a Citus cluster the coordinator takes a write's moment before the worker locks the
    # row: of two concurrent writes of one memory, the one that waited brings the earlier
    # moment. Written here by hand, as that write would reach the row.
    await storage.store("city", "Ana lives in Lisbon", **ANA)
    table = f'"{config.schema_name}"."{config.table}"'
    owner = "scope = 'user' AND scope_id = 'ana' AND key = 'city'"
    stored = await raw_conn.fetchval(f"SELECT updated_at FROM {table} WHERE {owner}")
    await raw_conn.execute(
        f"UPDATE {table} SET content = 'Ana lives in Porto', "
        f"value = to_jsonb('Ana lives in Porto'::text), updated_at = $1 WHERE {owner}",
        stored - timedelta(seconds=1),
    )
    second, first = await storage.history("city", **ANA)
    assert (first.version, second.version) == (1, 2)
    assert second.at > first.at
    entry = await storage.retrieve("city", **ANA)
    assert (entry.value, entry.version, entry.updated_at) == ("Ana lives in Porto", 2, second.at)
    as_of = await storage.retrieve("city", **ANA, as_of=second.at)
    assert as_of.value == "Ana lives in Porto"


async def test_a_failed_write_leaves_no_version(
    storage: PostgresStorage[str, Any], config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    await storage.store("ok", "fine", **ANA)
    with pytest.raises(MemoryValidationError):
        await storage.store_many(
            [{"key": "new", "value": "x"}, {"key": "ok", "value": None}], **ANA
        )
    # A write that fails inside the database rolls its version back with it.
    await raw_conn.execute(
        f'ALTER TABLE "{config.schema_name}"."{config.table}" ADD CONSTRAINT no_boom '
        "CHECK (content <> 'boom') NOT VALID"
    )
    with pytest.raises(MemoryValidationError, match="rejected"):
        await storage.store("ok", "boom", **ANA)
    rows = await raw_conn.fetch(f"SELECT key, version FROM {_history_table(config)} ORDER BY 1")
    assert [tuple(row) for row in rows] == [("ok", 1)]


async def test_a_cancelled_write_leaves_no_version(
    storage: PostgresStorage[str, Any], config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    await storage.store("slow", "v1", **ANA)
    async with raw_conn.transaction():
        # Hold the row: the next write waits on it, and is cancelled while waiting (its
        # statement is cancelled on the server and its transaction rolls back).
        await raw_conn.execute(
            f'SELECT 1 FROM "{config.schema_name}"."{config.table}" WHERE key = $1 FOR UPDATE',
            "slow",
        )
        task = asyncio.create_task(
            storage.store_many([{"key": "slow", "value": "v2"}, ("other", "x")], **ANA)
        )
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [v.value for v in await storage.history("slow", **ANA)] == ["v1"]
    assert await storage.history("other", **ANA) == []
    assert (await storage.retrieve("slow", **ANA)).version == 1


async def test_restore_brings_back_a_version_and_a_deleted_memory(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("pet", "a cat named Tom", **ANA, metadata={"n": 1})
    await storage.store("pet", "a dog named Rex", **ANA, metadata={"n": 2})
    restored = await storage.restore("pet", 1, **ANA, reason="mistake")
    assert (restored.value, restored.metadata, restored.version) == ("a cat named Tom", {"n": 1}, 3)
    top = (await storage.history("pet", **ANA))[0]
    assert (top.operation, top.reason, top.value) == ("restore", "mistake", "a cat named Tom")
    hits = await storage.search(MemoryQuery(query="a cat named Tom", limit=1))
    assert hits[0].entry.key == "pet" and hits[0].score > 0.99

    await storage.delete("pet", **ANA)
    with pytest.raises(MemoryNotFoundError):
        await storage.retrieve("pet", **ANA)
    back = await storage.restore("pet", 2)  # the key names its one holder, in the history
    assert (back.value, back.version) == ("a dog named Rex", 5)
    assert (await storage.retrieve("pet", **ANA)).value == "a dog named Rex"
    with pytest.raises(MemoryNotFoundError, match="no version 9"):
        await storage.restore("pet", 9, **ANA)
    with pytest.raises(MemoryValidationError):
        await storage.restore("pet", 0, **ANA)


async def test_deleted_memories_are_listed_until_stored_again(
    storage: PostgresStorage[str, Any],
) -> None:
    bruno = {"scope": MemoryScope.USER, "scope_id": "bruno"}
    await storage.store("tea", "Ana drinks green tea", **ANA)
    await storage.store("tea", "Ana drinks black tea", **ANA)
    await storage.store("car", "Ana drives a blue car", **ANA)
    await storage.store("tea", "Bruno drinks mate", **bruno)
    assert await storage.deleted() == []
    await storage.delete("tea", **ANA, reason="asked to forget")
    await storage.delete("tea", **bruno)
    gone = await storage.deleted(**ANA)
    assert [(v.key, v.operation, v.version, v.text) for v in gone] == [
        ("tea", "delete", 3, "Ana drinks black tea")
    ]
    assert gone[0].reason == "asked to forget"
    assert {v.scope_id for v in await storage.deleted()} == {"ana", "bruno"}
    assert len(await storage.deleted(limit=1)) == 1
    back = await storage.restore("tea", gone[0].version - 1, **ANA)
    assert back.text == "Ana drinks black tea"
    assert await storage.deleted(**ANA) == []
    with pytest.raises(MemoryValidationError):
        await storage.deleted(limit=0)


async def test_supersede_under_a_new_key_keeps_the_old_fact_closed(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("job", "Ana works at Acme", **ANA, type="long_term")
    new = await storage.supersede(
        "job", "Ana works at Globex", new_key="job-2", **ANA, reason="changed jobs", actor="bot"
    )
    assert (new.key, new.supersedes, new.valid_to) == ("job-2", "job", None)
    assert new.valid_from is not None
    with pytest.raises(MemoryNotFoundError):
        await storage.retrieve("job", **ANA)
    old = await storage.retrieve("job", **ANA, include_invalid=True)
    assert (old.superseded_by, old.valid_to) == ("job-2", new.valid_from)
    assert (await storage.history("job", **ANA))[0].operation == "supersede"
    assert (await storage.history("job", **ANA))[0].reason == "changed jobs"

    hits = await storage.search(MemoryQuery(query="where does Ana work", limit=5, **ANA))
    assert [hit.entry.key for hit in hits] == ["job-2"]
    every = await storage.search(
        MemoryQuery(query="where does Ana work", limit=5, include_invalid=True, **ANA)
    )
    assert {hit.entry.key for hit in every} == {"job", "job-2"}
    assert await storage.count(**ANA) == 1
    assert [e.key for e in await storage.list(**ANA)] == ["job-2"]
    # A closed fact cannot be superseded again, but it can be deleted (by its key alone too).
    with pytest.raises(MemoryNotFoundError):
        await storage.supersede("job", "Ana works at Initech", new_key="job-3", **ANA)
    assert await storage.delete("job")
    assert (await storage.history("job", **ANA))[0].operation == "delete"


async def test_supersede_the_same_key_and_invalidate(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("mood", "happy", **ANA)
    entry = await storage.supersede("mood", "tired", **ANA)
    assert (entry.version, entry.supersedes, entry.value) == (2, "mood", "tired")
    assert (await storage.history("mood", **ANA))[0].operation == "supersede"

    closed = await storage.invalidate("mood", **ANA, reason="no longer true")
    assert closed.valid_to is not None and closed.version == 3
    with pytest.raises(MemoryNotFoundError):
        await storage.retrieve("mood", **ANA)
    with pytest.raises(MemoryNotFoundError):
        await storage.invalidate("mood", **ANA)
    # Storing the key again starts a new fact.
    fresh = await storage.store("mood", "rested", **ANA)
    assert fresh.valid_to is None and fresh.valid_from > closed.valid_to  # type: ignore[operator]
    with pytest.raises(MemoryValidationError, match="before"):
        await storage.invalidate("mood", **ANA, at=datetime(2000, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(MemoryValidationError, match="timezone"):
        await storage.invalidate("mood", **ANA, at=datetime(2030, 1, 1))
    # A validity that ends in the future keeps the fact valid until then.
    later = await storage.invalidate("mood", **ANA, at=datetime.now(timezone.utc) + timedelta(1))
    assert later.valid_to is not None
    assert (await storage.retrieve("mood", **ANA)).value == "rested"


async def test_cleanup_records_expiry_and_trims_only_when_asked(
    make_config: Any,
) -> None:
    async with PostgresStorage[str, Any](
        make_config(history_max_versions=2), HashingEmbedder(64)
    ) as store:
        for i in range(4):
            await store.store("k", f"v{i}", **ANA)
        await store.store("brief", "soon gone", **ANA, ttl=0.2)
        await asyncio.sleep(0.4)
        assert await store.cleanup_expired() == 1
        assert [v.operation for v in await store.history("brief", **ANA)] == ["expire", "create"]
        assert [v.version for v in await store.history("k", **ANA)] == [4, 3]
    async with PostgresStorage[str, Any](
        make_config(history_max_age=timedelta(milliseconds=1)), HashingEmbedder(64)
    ) as store:
        await store.store("j", "one", **ANA)
        await store.store("j", "two", **ANA)
        await asyncio.sleep(0.05)
        await store.cleanup_expired()
        # Never a memory's newest version.
        assert [v.version for v in await store.history("j", **ANA)] == [2]


async def test_history_off_records_nothing(make_config: Any, raw_conn: asyncpg.Connection) -> None:
    config = make_config(history=False)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store("quiet", "one", **ANA)
        await store.store("quiet", "two", **ANA)
        assert (await store.retrieve("quiet", **ANA)).version == 2
        count = await raw_conn.fetchval(f"SELECT count(*) FROM {_history_table(config)}")
        assert count == 0
        # The live row still shows as the newest version.
        assert [(v.version, v.value) for v in await store.history("quiet", **ANA)] == [(2, "two")]


async def test_as_of_retrieve_and_search_follow_a_timeline(
    storage: PostgresStorage[str, Any],
) -> None:
    """Store, update, supersede, invalidate, delete, restore: at every step, reads as of that
    moment return exactly what was true then."""
    moments: list[tuple[datetime, dict[str, str]]] = []

    async def mark(truth: dict[str, str]) -> None:
        moments.append((await _server_now(storage), dict(truth)))

    await mark({})
    await storage.store("home", "Ana lives in Lisbon", **ANA)
    await storage.store("drink", "Ana drinks green tea", **ANA)
    await mark({"home": "Ana lives in Lisbon", "drink": "Ana drinks green tea"})
    await storage.store("home", "Ana lives in Porto", **ANA)
    await mark({"home": "Ana lives in Porto", "drink": "Ana drinks green tea"})
    await storage.supersede("drink", "Ana drinks black coffee", new_key="drink-2", **ANA)
    await mark({"home": "Ana lives in Porto", "drink-2": "Ana drinks black coffee"})
    await storage.invalidate("home", **ANA)
    await mark({"drink-2": "Ana drinks black coffee"})
    await storage.delete("drink-2", **ANA)
    await mark({})
    await storage.restore("drink-2", 1, **ANA)
    await storage.restore("home", 2, **ANA)
    await mark({"home": "Ana lives in Porto", "drink-2": "Ana drinks black coffee"})

    keys = ("home", "drink", "drink-2")
    for moment, truth in moments:
        for key in keys:
            if key in truth:
                entry = await storage.retrieve(key, **ANA, as_of=moment)
                assert entry.value == truth[key], (moment, key)
            else:
                with pytest.raises(MemoryNotFoundError):
                    await storage.retrieve(key, **ANA, as_of=moment)
        for index in (
            MemoryIndex.SEMANTIC,
            MemoryIndex.CONTEXTUAL,
            MemoryIndex.HYBRID,
            MemoryIndex.TEMPORAL,
        ):
            query = None if index is MemoryIndex.TEMPORAL else "Ana lives drinks tea coffee"
            hits = await storage.search(
                MemoryQuery(query=query, index_type=index, limit=10, as_of=moment, **ANA)
            )
            found = {hit.entry.key: hit.entry.value for hit in hits}
            if index is MemoryIndex.CONTEXTUAL or index is MemoryIndex.HYBRID:
                # Word search finds what holds the words; every hit must be true then.
                assert found.items() <= truth.items(), (moment, index)
                assert bool(found) == bool(truth), (moment, index)
            else:
                assert found == truth, (moment, index)
    # Now: what the last step says.
    now = {e.key: e.value for e in await storage.list(**ANA)}
    assert now == moments[-1][1]


async def test_as_of_needs_an_aware_moment(storage: PostgresStorage[str, Any]) -> None:
    with pytest.raises(MemoryValidationError, match="timezone"):
        MemoryQuery(query="x", as_of=datetime(2026, 1, 1))
    with pytest.raises(MemoryValidationError, match="timezone"):
        await storage.retrieve("x", **ANA, as_of=datetime(2026, 1, 1))


async def test_history_has_row_level_security(
    make_config: Any, raw_conn: asyncpg.Connection, ordinary: dict[str, str]
) -> None:
    # A superuser is exempt from every policy: row-level security for one is refused.
    with pytest.raises(MemoryConfigurationError, match="superuser"):
        async with PostgresStorage[str, Any](
            make_config(row_level_security=True, tenant="acme"), HashingEmbedder(64)
        ):
            pass
    config = make_config(row_level_security=True, tenant="acme", **ordinary)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store("secret", "acme's plan", **ANA)
    row = await raw_conn.fetchrow(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1::regclass",
        f"{config.schema_name}.{config.table}_history",
    )
    assert tuple(row) == (True, True)
    other = make_config(row_level_security=True, tenant="globex", table=config.table, **ordinary)
    async with PostgresStorage[str, Any](other, HashingEmbedder(64)) as store:
        assert await store.history("secret", **ANA) == []
        with pytest.raises(MemoryNotFoundError):
            await store.restore("secret", 1, **ANA)


def _comparable(versions: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (v.key, v.scope_id, v.version, v.operation, v.value, v.actor, v.reason, v.at, v.valid_to)
        for v in versions
    ]


@pytest.mark.parametrize("with_embeddings", [False, True])
async def test_export_with_history_restores_versions_validity_and_deleted_memories(
    make_config: Any, tmp_path: Path, with_embeddings: bool
) -> None:
    source, target = make_config(), make_config()
    backup = tmp_path / "history.jsonl"
    async with PostgresStorage[str, Any](source, HashingEmbedder(64)) as store:
        await store.store("job", "Ana works at Acme", **ANA, actor="agent")
        await store.store("job", "Ana works at Acme, in Lisbon", **ANA)
        middle = await _server_now(store)
        await store.supersede("job", "Ana works at Globex", new_key="job-2", **ANA, reason="moved")
        await store.store("gone", "a memory deleted later", **BRUNO)
        await store.delete("gone", **BRUNO, reason="asked")
        originals = {
            key: _comparable(await store.history(key, **owner))
            for key, owner in (("job", ANA), ("job-2", ANA), ("gone", BRUNO))
        }
        assert (
            await store.export_jsonl(backup, with_embeddings=with_embeddings, with_history=True)
            == 2
        )
    async with PostgresStorage[str, Any](target, HashingEmbedder(64)) as store:
        report = await store.import_jsonl(backup)
        assert (report.stored, report.versions, report.failed) == (2, 6, 0), report.errors
        for key, owner in (("job", ANA), ("job-2", ANA), ("gone", BRUNO)):
            assert _comparable(await store.history(key, **owner)) == originals[key], key
        # A current version is recorded without the vector its row keeps (schema 27), even
        # when the export gave it one.
        async with store.database.pool.acquire() as conn:
            copies = await conn.fetchval(
                f"SELECT count(*) FROM {_history_table(target)} h "
                f'JOIN "{target.schema_name}"."{target.table}" m USING (tenant, scope, scope_id, '
                "key, version) WHERE h.embedding IS NOT NULL"
            )
        assert copies == 0
        old = await store.retrieve("job", **ANA, include_invalid=True)
        assert (old.version, old.superseded_by, old.valid_to is not None) == (3, "job-2", True)
        assert (await store.retrieve("job-2", **ANA)).supersedes == "job"
        # Reads as of a moment before the import work on the imported history.
        assert (await store.retrieve("job", **ANA, as_of=middle)).value == (
            "Ana works at Acme, in Lisbon"
        )
        then = await store.search(MemoryQuery(query="Ana works", as_of=middle, **ANA))
        assert [hit.entry.key for hit in then] == ["job"]
        # The next change continues the numbering; a deleted memory can be restored.
        assert (await store.store("job-2", "Ana works at Globex, remotely", **ANA)).version == 2
        assert (await store.restore("gone", 1, **BRUNO)).version == 3
        again = await store.import_jsonl(backup)  # a memory changed since: named, not merged
        assert again.failed == 1 and "another history" in again.errors[0][1]


async def test_a_history_line_needs_a_history_export(make_config: Any, tmp_path: Path) -> None:
    line = {
        "kind": "version",
        "tenant": "",
        "scope": "user",
        "scope_id": "ana",
        "key": "k",
        "version": 1,
        "operation": "create",
        "value": "v",
        "text": "v",
        "type": "long_term",
        "indices": ["semantic"],
        "metadata": {},
        "created_at": "2026-01-01T00:00:00+00:00",
        "at": "2026-01-01T00:00:00+00:00",
    }
    path = tmp_path / "lines.jsonl"
    path.write_text(json.dumps(line) + "\n")
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(64)) as store:
        report = await store.import_jsonl(path)
        assert report.failed == 1 and "header" in report.errors[0][1]
        assert await store.history("k", **ANA) == []


class _ReversedModel(HashingEmbedder):
    """Another model of the hashing embedder's dimension (its vectors reversed)."""

    name = "reversed-model"

    async def embed_documents(self, texts: list[str]) -> Any:
        return (await super().embed_documents(texts))[:, ::-1].copy()

    async def embed_query(self, text: str) -> Any:
        return (await super().embed_query(text))[::-1].copy()


async def test_a_version_replaced_during_a_re_embedding_keeps_no_vector_of_the_old_model(
    config: PostgresConfig, raw_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A version gets its vector from the memory row when replaced. While a re-embedding
    # walks the rows, a row it has not reached yet still holds the previous model's vector:
    # a version replaced then would keep it, and be compared with the new model's queries.
    keys = [f"k{i}" for i in range(10)]
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store_many(
            [{"key": key, "value": f"note {key} about tea"} for key in keys], **ANA
        )
    from pepperpy_pg_memory.operations import conversing

    walked = conversing.indexed_vectors
    replaced: list[str] = []

    async def replacing_ahead_of_the_walk(started: Any, contents: Any, places: Any) -> Any:
        if not replaced:  # the first batch: k9's row still holds the previous model's vector
            replaced.append("k9")
            await moving_store.store("k9", "note k9 about coffee", **ANA)
        return await walked(started, contents, places)

    monkeypatch.setattr(conversing, "indexed_vectors", replacing_ahead_of_the_walk)
    moving = config.model_copy(update={"on_embedder_change": "reindex", "embedding_batch_size": 1})
    moving_store = PostgresStorage[str, Any](moving, _ReversedModel(32))
    async with moving_store:
        assert replaced == ["k9"]
        # The replaced version has no vector; the current one is the new model's.
        assert await _recorded_vectors(raw_conn, config, "k9") == {1: None, 2: None}
        newest, oldest = await moving_store.history("k9", **ANA, include_embedding=True)
        assert oldest.embedding is None
        expected = await _ReversedModel(32).embed_documents(["note k9 about coffee"])
        assert newest.embedding == pytest.approx(list(expected[0]), abs=1e-6)


async def test_a_model_change_never_compares_versions_across_models(
    config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store("k", "green tea in the morning", **ANA)
        await store.store("k", "black coffee at noon", **ANA)
    moving = config.model_copy(update={"on_embedder_change": "reindex"})
    async with PostgresStorage[str, Any](moving, _ReversedModel(32)) as store:
        rows = await raw_conn.fetch(
            f"SELECT h.version, h.embedding::text = m.embedding::text AS same "
            f'FROM {_history_table(config)} h JOIN "{config.schema_name}"."{config.table}" m '
            "USING (tenant, scope, scope_id, key) ORDER BY h.version"
        )
        # The replaced version has no vector (the old model's is gone); the current one's is
        # the table's, the new model's, which its history row gets when it is replaced.
        assert [(row["version"], row["same"]) for row in rows] == [(1, None), (2, None)]
        current = (await store.history("k", **ANA, limit=1, include_embedding=True))[0]
        assert current.version == 2
        assert (
            current.embedding
            == (await store.retrieve("k", **ANA, include_embedding=True)).embedding
        )
        now = await _server_now(store)
        hits = await store.search(MemoryQuery(query="black coffee at noon", as_of=now, **ANA))
        assert hits[0].entry.key == "k" and hits[0].score == pytest.approx(1.0, abs=1e-4)
