"""Connection faults surface as MemoryError subclasses, never raw driver errors or hangs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import asyncpg
import pytest

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryConnectionError,
    MemoryError,
    MemoryTimeoutError,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.faults import is_transient, translate
from pepperpy_pg_memory.sql import Query, Session


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_server_is_a_connection_error() -> None:
    config = PostgresConfig(
        host="127.0.0.1",
        port=_closed_port(),
        password="topsecret",
        retry_attempts=1,
        retry_base_delay=0.01,
        retry_max_delay=0.02,
        connect_timeout=2,
    )
    store = PostgresStorage[str, Any](config, HashingEmbedder(8))
    with pytest.raises(MemoryConnectionError) as caught:
        await store.start()
    assert caught.value.store_type == "postgres"
    assert caught.value.__cause__ is not None
    assert "topsecret" not in str(caught.value)
    assert not store.started


async def test_pool_exhaustion_times_out_with_a_clear_error(make_config: Any) -> None:
    config = make_config(min_size=1, max_size=1, pool_timeout=0.3)
    async with PostgresStorage[str, Any](config, HashingEmbedder(8)) as store:
        await store.store("k", "v")
        held = await store.database.pool.acquire()  # a long operation holding the only connection
        try:
            with pytest.raises(MemoryTimeoutError, match="no free database connection"):
                await asyncio.wait_for(store.retrieve("k"), timeout=5)
        finally:
            await store.database.pool.release(held)
        assert (await store.retrieve("k")).value == "v"


async def test_queued_operations_complete_when_connections_free_up(make_config: Any) -> None:
    config = make_config(min_size=1, max_size=2, pool_timeout=10)
    async with PostgresStorage[str, Any](config, HashingEmbedder(8)) as store:
        await asyncio.gather(*(store.store(f"k{i}", f"v{i}") for i in range(40)))
        values = await asyncio.gather(*(store.retrieve(f"k{i}") for i in range(40)))
        assert [v.value for v in values] == [f"v{i}" for i in range(40)]


async def test_killed_connection_is_retried_transparently(
    storage: PostgresStorage[str, Any], raw_conn: Any
) -> None:
    await storage.store("k", "v")
    killed = await raw_conn.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'pepperpy-pg-memory' AND datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    assert killed >= 1
    assert (await storage.retrieve("k")).value == "v"


@pytest.mark.parametrize(
    "error, transient",
    [
        (asyncpg.AdminShutdownError("terminating connection"), True),  # 57P01
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),  # 57P03
        (asyncpg.ConnectionFailureError("connection failure"), True),  # 08006: class 08
        (asyncpg.ConnectionDoesNotExistError("closed in the middle"), True),  # 08003
        (asyncpg.SerializationError("could not serialize"), True),  # 40001
        (asyncpg.UniqueViolationError("duplicate key"), False),  # 23505
        (asyncpg.InsufficientPrivilegeError("permission denied"), False),  # 42501
        (asyncpg.InterfaceError("cannot call Connection.fetch(): released"), False),
        (asyncpg.InternalClientError("cannot switch to state 12"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("timed out"), False),
    ],
)
def test_faults_are_classified_by_sqlstate_and_public_classes(
    error: BaseException, transient: bool
) -> None:
    assert is_transient(error) is transient
    assert isinstance(translate(error, "store"), MemoryError)


def test_a_refusal_by_the_database_is_a_permission_error() -> None:
    from pepperpy_pg_memory import MemoryPermissionError

    error = translate(
        asyncpg.InsufficientPrivilegeError("new row violates row-level security"), "store"
    )
    assert isinstance(error, MemoryPermissionError) and isinstance(error, PermissionError)
    assert "row-level security" in str(error)


async def test_a_connection_left_mid_operation_is_replaced_and_the_work_retried(
    storage: Any,
) -> None:
    """Under backend kills the driver may leave a connection's protocol mid-operation: every
    later call on it, its rollback and the pool's reset included, fails with "another
    operation is in progress". The connection is dropped and the work runs again on a fresh
    one, instead of the reset's error escaping as a permanent failure."""
    attempts = 0
    stray: list[asyncio.Future[Any]] = []

    async def work(session: Session) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            stray.append(asyncio.ensure_future(session.fetchval(Query("SELECT pg_sleep(0.3)"))))
            await asyncio.sleep(0)
            async with session.transaction():
                await session.execute(Query("SELECT 1"))
        return int(await session.fetchval(Query("SELECT 41 + 1")))

    assert await storage.database.run("probe", work) == 42
    assert attempts == 2
    with contextlib.suppress(Exception):
        await stray[0]
