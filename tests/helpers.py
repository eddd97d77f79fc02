"""Test doubles that are not databases (embedders that count or fail on cue), a lock that
makes a real table stop answering, the one way tests wait for something to happen, and the
nodes of a plan."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import numpy as np

from pepperpy_pg_memory import HashingEmbedder


class CountingEmbedder(HashingEmbedder):
    """The hashing embedder, recording every batch of texts it is asked to embed."""

    def __init__(self, dimension: int = 64) -> None:
        super().__init__(dimension)
        self.batches: list[list[str]] = []
        self.queries: list[str] = []

    @property
    def embedded_texts(self) -> list[str]:
        return [text for batch in self.batches for text in batch]

    async def embed_documents(self, texts: list[str]) -> Any:
        self.batches.append(list(texts))
        return await super().embed_documents(texts)

    async def embed_query(self, text: str) -> Any:
        self.queries.append(text)
        return await super().embed_query(text)


class FailingEmbedder(HashingEmbedder):
    """Fails on the n-th call of embed_documents (1-based), as a crashed model would."""

    def __init__(self, dimension: int, fail_on_call: int) -> None:
        super().__init__(dimension)
        self.calls = 0
        self.fail_on_call = fail_on_call

    async def embed_documents(self, texts: list[str]) -> Any:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("model crashed")
        return await super().embed_documents(texts)


class FixedEmbedder(HashingEmbedder):
    """Returns the given vector for every text (to feed the store bad embeddings)."""

    def __init__(self, vector: list[float]) -> None:
        super().__init__(len(vector))
        self.vector = np.asarray(vector, dtype=np.float32)

    async def embed_documents(self, texts: list[str]) -> Any:
        return np.stack([self.vector for _ in texts])

    async def embed_query(self, text: str) -> Any:
        return self.vector


@contextlib.asynccontextmanager
async def table_locked(dsn: str, table: str) -> AsyncIterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on ``table`` (already quoted and qualified) from another
    connection: every statement on it waits until the block ends."""
    blocker = await asyncpg.connect(dsn)
    try:
        async with blocker.transaction():
            await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await blocker.close()


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds`` (a generous
    bound: a loaded machine is slow, never wrong)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.05)


async def until(condition: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """:func:`wait_until` for a condition that must be awaited."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {seconds:g} s"
        await asyncio.sleep(0.05)


def wait_for_port(process: subprocess.Popen[Any], port: int, seconds: float = 120) -> None:
    """Wait until ``process`` listens on ``port`` of 127.0.0.1; fail with its stderr if it
    exits first."""

    def listening() -> bool:
        if process.poll() is not None:
            error = process.stderr.read() if process.stderr else ""
            raise AssertionError(error.decode() if isinstance(error, bytes) else error)
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, seconds, f"a server on port {port}")
    except AssertionError:
        process.kill()
        raise


async def expiry_of(connection: asyncpg.Connection, config: Any, key: str) -> Any:
    """When the memory under ``key`` expires, as the database says it without the library:
    its row's expiry, or the later one a TTL refresh kept beside it gave (NULL: never)."""
    table = f'"{config.schema_name}"."{config.table}"'
    refreshes = f'"{config.schema_name}"."{config.table}_refreshes"'
    return await connection.fetchval(
        f"SELECT greatest(m.expires_at, r.expires_at) FROM {table} m LEFT JOIN {refreshes} r "
        "ON (r.tenant, r.scope, r.scope_id, r.key) = (m.tenant, m.scope, m.scope_id, m.key) "
        "AND r.refreshed_from = m.expires_at WHERE m.key = $1",
        key,
    )


def plan_nodes(plan: str) -> list[dict[str, Any]]:
    """Every node of a plan ``EXPLAIN (FORMAT JSON)`` returned."""
    nodes: list[dict[str, Any]] = []
    stack = [json.loads(plan)[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "ARRAY[" + ", ".join(_literal(item) for item in value) + "]"
    raise TypeError(f"no literal for {value!r}")


async def generic_plan(conn: Any, sql: str, args: Sequence[Any]) -> str:
    """``EXPLAIN (ANALYZE, FORMAT JSON)`` of ``sql`` run with ``args`` (text, numbers,
    booleans) under a generic plan, as the store runs its word searches: planned once, for
    any owner."""
    given = ", ".join(_literal(arg) for arg in args)
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE generic_plan_of_test AS {sql}")
        try:
            plan: str = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE generic_plan_of_test({given})"
            )
        finally:
            await conn.execute("DEALLOCATE generic_plan_of_test")
    return plan
