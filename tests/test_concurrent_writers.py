"""Many writers on the same memories at once: versions stay gapless and in commit order, no
two operations wait for each other in a cycle (PostgreSQL counts every deadlock it breaks),
TTL refreshes never wait for a writer, and a write repeated as it is records nothing new."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from stress_worker import OWNER, Outcomes, workload

from pepperpy_pg_memory import (
    HashingEmbedder,
    PostgresConfig,
    PostgresStorage,
)


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
        outcomes = await workload([store], tasks=12, operations=40, seed=1)
    assert not outcomes.errors
    assert outcomes.acknowledged <= await _recorded_tokens(raw_conn, config)
    _check_versions(*await _versions(raw_conn, config))
    assert await _deadlocks(raw_conn) == before


async def test_a_quota_under_concurrent_batches_evicts_without_deadlocks(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config(max_size=8, max_memories_per_owner=6)
    before = await _deadlocks(raw_conn)
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        outcomes = await workload([store], tasks=12, operations=40, seed=2)
        assert await store.count(**OWNER) <= 6
    # Consolidation promotes memories read often to long-term, which the quota never evicts:
    # once all are, a new memory is refused (documented), and nothing of it is written.
    assert set(outcomes.errors) <= {"MemoryQuotaError"}
    recorded = await _recorded_tokens(raw_conn, config)
    assert outcomes.acknowledged <= recorded
    assert not outcomes.failed & recorded
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
    # The refresh is kept beside the memory, whose row it neither writes nor locks: the
    # held memory is refreshed too (a write that commits sets its own expiry, which the
    # refresh then no longer extends: see test_expiry_and_scopes).
    assert extended == 2
    for key in ("busy", "free"):
        expiry = (await storage.retrieve(key, **OWNER)).expires_at
        assert expiry is not None and expiry > datetime.now(timezone.utc) + timedelta(hours=23)


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


STRESS_PROCESSES = 4
WORKER = Path(__file__).with_name("stress_worker.py")


def _logged_deadlocks(log: Path | None, start: int) -> list[str]:
    """The deadlocks the server reported in its log after byte ``start``."""
    if log is None:
        return []
    with log.open("rb") as file:
        file.seek(start)
        text = file.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if "deadlock detected" in line]


@pytest.mark.stress
async def test_stress_processes_and_killed_backends(
    make_config: Any,
    raw_conn: asyncpg.Connection,
    pg_dsn: str,
    test_schema: str,
    server_log: Path | None,
) -> None:
    """Several processes, each a store with many tasks, on one small key space with a quota,
    deduplication and TTL refreshes on, while this process terminates their backends: only
    documented errors surface, versions stay gapless, each memory's live value is its last
    version, what the callers were told is what the database holds, and the server reports no
    deadlock."""
    fields: dict[str, Any] = {
        "dsn": pg_dsn,
        "schema": test_schema,
        "table": make_config().table,
        "max_size": 4,
        "max_memories_per_owner": 8,
        "retry_attempts": 4,
        "retry_base_delay": 0.05,
        "retry_max_delay": 0.2,
        # All writes queue on the one owner's lock: on a loaded machine a caller can wait
        # longer than the default 10 s for a connection. The test is about what the callers
        # are told, not how fast (a hang still fails at the wait below).
        "pool_timeout": 90,
        "command_timeout": 90,
    }
    config = make_config(**fields)
    log_start = server_log.stat().st_size if server_log is not None else 0
    before = await _deadlocks(raw_conn)
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                json.dumps(fields),
                "10",  # tasks
                "100",  # operations each
                str(seed),
                stdout=asyncio.subprocess.PIPE,
            )
            for seed in range(STRESS_PROCESSES)
        ]
        for worker in workers:  # every store started: the kills hit the workload
            assert worker.stdout is not None
            assert await asyncio.wait_for(worker.stdout.readline(), 120) == b"ready\n"
        done = asyncio.Event()
        killed = 0

        async def killer() -> None:
            nonlocal killed
            while not done.is_set():
                await asyncio.sleep(0.3)
                killed += await raw_conn.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ("
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' AND state = 'active' LIMIT 2) busy"
                )

        killing = asyncio.create_task(killer())
        try:
            reports = [await asyncio.wait_for(worker.communicate(), 170) for worker in workers]
        finally:
            done.set()
            await killing
        assert [worker.returncode for worker in workers] == [0] * STRESS_PROCESSES
        assert killed > 0  # the workload ran under fire
        assert await store.count(**OWNER) <= 8
    outcomes = Outcomes()
    for stdout, _ in reports:
        outcomes.merge(Outcomes.from_json(stdout.decode().strip().splitlines()[-1]))
    documented = {"MemoryConnectionError", "MemoryOutcomeUnknownError", "MemoryQuotaError"}
    assert set(outcomes.errors) <= documented
    recorded, live = await _versions(raw_conn, config)
    _check_versions(recorded, live)
    # What the callers were told is what the database holds.
    tokens = await _recorded_tokens(raw_conn, config)
    assert outcomes.acknowledged <= tokens
    assert not outcomes.failed & tokens
    live_tokens = await raw_conn.fetch(
        f'SELECT value ->> \'token\' AS token FROM "{test_schema}"."{config.table}"'
    )
    assert {row["token"] for row in live_tokens} <= outcomes.acknowledged | outcomes.unknown
    assert await _deadlocks(raw_conn) == before
    assert _logged_deadlocks(server_log, log_start) == []


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
