"""Faults against a server of the tests' own, which they restart and whose backends they kill:
no acknowledged memory is lost, every failure is a MemoryError, and the store recovers.

Marked ``faults`` (``-m faults`` selects them, ``-m "not faults"`` skips them).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import asyncpg
import pytest
from conftest import PrivateServer

from helpers import table_locked, until
from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryError,
    MemoryQuery,
    MemoryTimeoutError,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.sql import Query

pytestmark = pytest.mark.faults


def _config(server: PrivateServer, **overrides: Any) -> PostgresConfig:
    values: dict[str, Any] = {
        "dsn": server.uri,
        "table": f"f_{uuid.uuid4().hex[:10]}",
        "retry_attempts": 8,
        "retry_base_delay": 0.2,
        "retry_max_delay": 1.0,
        "command_timeout": 20,
        "pool_timeout": 20,
    }
    values.update(overrides)
    return PostgresConfig(**values)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_server_restart_under_load_loses_no_acknowledged_memory(
    private_server: PrivateServer, mode: str
) -> None:
    async with PostgresStorage[str, Any](_config(private_server), HashingEmbedder(16)) as store:
        acknowledged: dict[str, Any] = {}
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def writer(number: int) -> None:
            sequence = 0
            while not stop.is_set():
                key = f"w{number}-{sequence}"
                value = {"content": f"note {number}/{sequence} — ünïcødé ✓", "n": sequence}
                try:
                    await asyncio.wait_for(store.store(key, value), timeout=60)
                    acknowledged[key] = value
                except Exception as exc:  # collected, then judged below
                    failures.append(exc)
                sequence += 1

        started_at = await store.database.run(
            "check", lambda session: session.fetchval(Query("SELECT pg_postmaster_start_time()"))
        )

        async def acknowledged_beyond(count: int) -> None:
            # Progress, not a fixed sleep: a slow or busy machine only makes this take longer.
            async def beyond() -> bool:
                return len(acknowledged) > count

            await until(beyond, 60, f"more than {count} writes acknowledged")

        writers = [asyncio.create_task(writer(n)) for n in range(24)]
        await acknowledged_beyond(24)
        before = len(acknowledged)
        await asyncio.to_thread(private_server.restart, mode)
        # writes go on after the restart
        await acknowledged_beyond(len(acknowledged) + 24)
        stop.set()
        await asyncio.gather(*writers)

        assert len(acknowledged) > before > 0
        raw = [f for f in failures if not isinstance(f, MemoryError)]
        assert raw == [], raw[:3]
        stored = await store.retrieve_many(list(acknowledged))
        assert set(stored) == set(acknowledged)
        for key, value in acknowledged.items():
            assert stored[key].value == value, key
        # the same store object keeps working, on the restarted server
        restarted_at = await store.database.run(
            "check", lambda session: session.fetchval(Query("SELECT pg_postmaster_start_time()"))
        )
        assert restarted_at > started_at
        await store.store("after-restart", "fine")
        assert (await store.retrieve("after-restart")).value == "fine"


async def test_killed_backends_mid_workload(private_server: PrivateServer) -> None:
    config = _config(private_server, max_size=6)
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        await store.store_many((f"seed{i}", f"seed text {i}") for i in range(200))
        stop = asyncio.Event()
        failures: list[BaseException] = []
        done = 0
        written: dict[str, str] = {}

        async def killer() -> None:
            conn = await asyncpg.connect(private_server.uri)
            try:
                while not stop.is_set():
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'pepperpy-pg-memory' "
                        "AND pid <> pg_backend_pid()"
                    )
                    await asyncio.sleep(0.05)
            finally:
                await conn.close()

        async def worker(number: int) -> None:
            nonlocal done
            rng = random.Random(number)
            for step in range(60):
                try:
                    if rng.random() < 0.5:
                        await store.search(MemoryQuery(query=f"seed text {rng.randint(0, 199)}"))
                    elif rng.random() < 0.5:
                        await store.retrieve(f"seed{rng.randint(0, 199)}")
                    else:
                        key = f"k{number}-{step}"
                        await store.store(key, f"value {number} {step}")
                        written[key] = f"value {number} {step}"
                    done += 1
                except Exception as exc:
                    failures.append(exc)

        killing = asyncio.create_task(killer())
        await asyncio.gather(*(worker(n) for n in range(8)))
        stop.set()
        await killing

        assert all(isinstance(f, MemoryError) for f in failures), failures[:3]
        assert done > 0.9 * 8 * 60  # retries absorb nearly every kill
        stored = await store.retrieve_many(list(written))
        assert {k: e.value for k, e in stored.items()} == written
        assert store.database.pool.get_size() <= 6
        assert await store.count() == 200 + len(written)


async def test_pool_exhaustion_with_a_blocking_query_times_out_cleanly(
    private_server: PrivateServer,
) -> None:
    config = _config(private_server, max_size=2, pool_timeout=0.5, command_timeout=1.0)
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        await store.store("k", "v")
        async with table_locked(private_server.uri, f'public."{config.table}"'):
            started = asyncio.get_running_loop().time()
            outcomes = await asyncio.gather(
                *(store.retrieve("k") for _ in range(6)), return_exceptions=True
            )
            elapsed = asyncio.get_running_loop().time() - started
        assert all(isinstance(o, MemoryTimeoutError) for o in outcomes), outcomes
        # Calls queued for the pool give up after pool_timeout; those holding a connection
        # after command_timeout (1 s here): all within pool_timeout + 1 s.
        assert elapsed < config.pool_timeout + 1
        # once the lock is gone, the same pool serves again
        results = await asyncio.gather(*(store.retrieve("k") for _ in range(6)))
        assert all(r.value == "v" for r in results)


async def test_concurrent_upserts_of_one_key(private_server: PrivateServer) -> None:
    async with PostgresStorage[str, Any](_config(private_server), HashingEmbedder(16)) as store:
        first = await store.store("shared", {"content": "first", "writer": -1})
        entries = await asyncio.gather(
            *(store.store("shared", {"content": f"from {n}", "writer": n}) for n in range(40))
        )
        final = await store.retrieve("shared")
        assert await store.count() == 1
        assert final.created_at == first.created_at
        last = max(entries, key=lambda e: e.updated_at)
        assert final.value == last.value
        assert final.updated_at == last.updated_at


async def test_cancelled_writes_and_searches_leave_no_damage(private_server: PrivateServer) -> None:
    config = _config(private_server, max_size=3)
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        for delay in (0.0, 0.01, 0.05, 0.1):
            await store.clear()
            task = asyncio.create_task(
                store.store_many((f"k{i}", f"text {i}") for i in range(5_000))
            )
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            assert await store.count() in (0, 5_000)  # all or nothing

        async with table_locked(private_server.uri, f'public."{config.table}"'):
            searches = [
                asyncio.ensure_future(store.search(MemoryQuery(query="text 1"))) for _ in range(3)
            ]
            await asyncio.sleep(0.3)
            for search in searches:
                search.cancel()
            await asyncio.gather(*searches, return_exceptions=True)
        # every pooled connection is usable again
        results = await asyncio.gather(*(store.count() for _ in range(6)))
        assert len(set(results)) == 1
        # No cancelled statement is left running. (Background work — the BM25 statistics
        # refresh after 5,000 writes — may be active a moment: it must end, a stuck query
        # would not.)
        check = Query(
            "SELECT array_agg(query) FROM pg_stat_activity WHERE application_name = "
            "'pepperpy-pg-memory' AND state = 'active' AND pid <> pg_backend_pid()"
        )

        async def idle() -> bool:
            return not await store.database.run("check", lambda session: session.fetchval(check))

        await until(idle, 10, "no statement of the store still active")
