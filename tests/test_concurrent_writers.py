"""Many writers on the same memories at once: versions stay gapless and in commit order, no
two operations wait for each other in a cycle (PostgreSQL counts every deadlock it breaks),
TTL refreshes never wait for a writer, and a write repeated as it is records nothing new."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryConnectionError,
    MemoryNotFoundError,
    MemoryOutcomeUnknownError,
    MemoryQuotaError,
    PostgresConfig,
    PostgresStorage,
)

OWNER = {"scope": "user", "scope_id": "ana"}


async def _deadlocks(conn: asyncpg.Connection) -> int:
    # Backends report their counters at most once a second, and when they exit.
    await asyncio.sleep(1.5)
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def _versions(
    conn: asyncpg.Connection, config: PostgresConfig
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Per key: the versions the history holds (in the order they were recorded), and the
    version of the live row."""
    history = await conn.fetch(
        f'SELECT key, version FROM "{config.schema_name}"."{config.table}_history" '
        "ORDER BY key, at, version"
    )
    live = await conn.fetch(f'SELECT key, version FROM "{config.schema_name}"."{config.table}"')
    recorded: dict[str, list[int]] = {}
    for row in history:
        recorded.setdefault(row["key"], []).append(row["version"])
    return recorded, {row["key"]: row["version"] for row in live}


def _check_versions(recorded: dict[str, list[int]], live: dict[str, int]) -> None:
    for key, versions in recorded.items():
        assert versions == list(range(1, len(versions) + 1)), (key, versions)
        if key in live:
            assert live[key] == versions[-1], (key, live[key], versions)


class Outcomes:
    """What the callers were told of each write: every stored value is a token of its own."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.acknowledged: set[str] = set()
        self.failed: set[str] = set()


async def _workload(
    stores: list[PostgresStorage[str, Any]], *, tasks: int, operations: int, seed: int
) -> Outcomes:
    keys = [f"k{n}" for n in range(10)]
    outcomes = Outcomes()

    async def worker(number: int) -> None:
        rnd = random.Random(seed * 1000 + number)
        store = stores[number % len(stores)]
        for step in range(operations):
            operation = rnd.choice(["store", "store", "delete", "touch", "many", "get", "tidy"])
            tokens: list[str] = []
            try:
                if operation == "store":
                    tokens = [f"{number}-{step}"]
                    await store.store(
                        rnd.choice(keys),
                        {"token": tokens[0]},
                        type="short_term",
                        dedupe=rnd.random() < 0.5,
                        **OWNER,
                    )
                elif operation == "delete":
                    await store.delete(rnd.choice(keys), **OWNER)
                elif operation == "touch":
                    await store.touch(rnd.sample(keys, 4), timedelta(minutes=5), **OWNER)
                elif operation == "many":
                    chosen = rnd.sample(keys, 4)
                    tokens = [f"{number}-{step}-{key}" for key in chosen]
                    batch = [
                        (key, {"token": token}) for key, token in zip(chosen, tokens, strict=True)
                    ]
                    await store.store_many(batch, type="short_term", **OWNER)
                elif operation == "tidy":
                    await store.consolidate(scope="user", scope_id="ana")
                else:
                    await store.retrieve(rnd.choice(keys), **OWNER)
                outcomes.acknowledged.update(tokens)
            except MemoryNotFoundError:
                pass
            except MemoryOutcomeUnknownError:
                outcomes.errors["MemoryOutcomeUnknownError"] += 1
            except (MemoryConnectionError, MemoryQuotaError) as exc:
                outcomes.errors[type(exc).__name__] += 1
                outcomes.failed.update(tokens)

    await asyncio.gather(*(worker(number) for number in range(tasks)))
    return outcomes


async def _recorded_tokens(conn: asyncpg.Connection, config: PostgresConfig) -> set[str]:
    """Every value any version of any memory held (the history keeps them all)."""
    rows = await conn.fetch(
        f'SELECT value ->> \'token\' AS token FROM "{config.schema_name}"."{config.table}_history"'
    )
    return {row["token"] for row in rows if row["token"] is not None}


async def test_versions_stay_gapless_under_interleaved_stores_and_deletes(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    """Put/delete of the same keys from many connections (LangGraph's burst shape): a
    re-store raced a delete for the next version number and lost with a duplicate key."""
    config = make_config(max_size=8)
    before = await _deadlocks(raw_conn)
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        outcomes = await _workload([store], tasks=12, operations=40, seed=1)
    assert outcomes.errors == Counter()
    assert outcomes.acknowledged <= await _recorded_tokens(raw_conn, config)
    _check_versions(*await _versions(raw_conn, config))
    assert await _deadlocks(raw_conn) == before


async def test_a_quota_under_concurrent_batches_evicts_without_deadlocks(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config(max_size=8, max_memories_per_owner=6)
    before = await _deadlocks(raw_conn)
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        outcomes = await _workload([store], tasks=12, operations=40, seed=2)
        assert await store.count(**OWNER) <= 6
    assert outcomes.errors == Counter()
    assert outcomes.acknowledged <= await _recorded_tokens(raw_conn, config)
    _check_versions(*await _versions(raw_conn, config))
    assert await _deadlocks(raw_conn) == before


async def test_a_ttl_refresh_never_waits_for_a_writer(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    await storage.store("busy", "v", ttl=60, **OWNER)
    await storage.store("free", "v", ttl=60, **OWNER)
    table = f'"{storage.config.schema_name}"."{storage.config.table}"'
    async with raw_conn.transaction():
        # A writer holding the row, as a store would until it commits.
        await raw_conn.execute(f"SELECT 1 FROM {table} WHERE key = 'busy' FOR UPDATE")
        extended = await asyncio.wait_for(
            storage.touch(["busy", "free"], timedelta(days=1), **OWNER), timeout=60
        )
    assert extended == 1
    assert (await storage.retrieve("free", **OWNER)).expires_at > (
        await storage.retrieve("busy", **OWNER)
    ).expires_at


async def test_storing_a_memory_as_it_is_records_no_version(
    storage: PostgresStorage[str, Any],
) -> None:
    first = await storage.store("k", {"x": 1}, metadata={"a": 1}, **OWNER)
    again = await storage.store("k", {"x": 1}, metadata={"a": 1}, ttl=3600, **OWNER)
    assert again.version == first.version == 1
    assert again.updated_at == first.updated_at
    assert again.expires_at is not None  # the expiry given still applies
    changed = await storage.store("k", {"x": 1}, metadata={"a": 2}, **OWNER)
    assert changed.version == 2
    history = await storage.history("k", **OWNER)
    assert [(v.version, v.operation) for v in history] == [(2, "update"), (1, "create")]


@pytest.mark.stress
async def test_stress_two_stores_and_killed_backends(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    """Two stores (two pools, as two processes would have) on one small key space with a quota
    on, while another task terminates their backends: only connection errors surface, the
    versions stay gapless, and PostgreSQL breaks no deadlock."""
    config = make_config(max_size=6, max_memories_per_owner=8, retry_attempts=4)
    before = await _deadlocks(raw_conn)
    async with (
        PostgresStorage[str, Any](config, HashingEmbedder(32)) as first,
        PostgresStorage[str, Any](config, HashingEmbedder(32)) as second,
    ):
        done = asyncio.Event()

        async def killer() -> None:
            while not done.is_set():
                await asyncio.sleep(0.3)
                await raw_conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' AND state = 'active' LIMIT 2"
                )

        killing = asyncio.create_task(killer())
        try:
            outcomes = await _workload([first, second], tasks=16, operations=60, seed=3)
        finally:
            done.set()
            await killing
        assert await first.count(**OWNER) <= 8
    assert set(outcomes.errors) <= {"MemoryConnectionError", "MemoryOutcomeUnknownError"}
    _check_versions(*await _versions(raw_conn, config))
    # What the callers were told is what the database holds.
    recorded = await _recorded_tokens(raw_conn, config)
    assert outcomes.acknowledged <= recorded
    assert not outcomes.failed & recorded
    assert await _deadlocks(raw_conn) == before


async def test_concurrent_bulk_loads_rebuilding_the_index_do_not_deadlock(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    """Batches large enough to drop and rebuild the vector index, several at once on an
    empty table (an agent host's burst of puts): they dropped the index in turns and
    deadlocked."""
    config = make_config(bulk_index_rebuild_rows=50, max_size=6)
    before = await _deadlocks(raw_conn)
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        counts = await asyncio.gather(
            *(
                store.store_many([(f"b{batch}-{n}", f"note {batch} {n}") for n in range(60)])
                for batch in range(6)
            )
        )
        assert [int(count) for count in counts] == [60] * 6
        assert await store.count() == 360
    assert await _deadlocks(raw_conn) == before
