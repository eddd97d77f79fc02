"""The connection-level steps of ``reindex()`` and ``stats()``.

Each function runs on one connection handed to it by ``PostgresStorage._run`` (which owns
retries, timeouts and error translation) and does one thing; the statements come from
:class:`~pepperpy_pg_memory.queries.Statements`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import asyncpg

from .errors import MemoryConfigurationError
from .queries import Restriction, Statements
from .schema import TableLayout, text_search_config_exists
from .types import Identity

logger = logging.getLogger(__name__)

__all__ = [
    "decode_cursor",
    "encode_cursor",
    "build_vector_index",
    "convert_dimension",
    "fetch_reindex_batch",
    "rebuild_contextual",
    "table_figures",
    "write_reindexed",
]


def encode_cursor(tenant: str, position: Identity) -> str:
    """A reindex position as the registry keeps it."""
    return json.dumps([tenant, *position])


def decode_cursor(saved: str | None, tenant: str) -> Identity | None:
    """The position a reindex of ``tenant`` left, or None to start from the beginning (none
    saved, another tenant's, or a key alone as releases before owner identity saved it)."""
    if not saved:
        return None
    try:
        parts = json.loads(saved)
    except json.JSONDecodeError:
        parts = None
    if not (isinstance(parts, list) and len(parts) == 4 and all(isinstance(p, str) for p in parts)):
        logger.info("reindex position %r is from an older release: starting over", saved)
        return None
    if parts[0] != tenant:
        return None
    return Identity(*parts[1:])


async def fetch_reindex_batch(
    statements: Statements,
    tenant: str,
    cursor: Identity | None,
    batch: int,
    conn: asyncpg.Connection,
) -> list[asyncpg.Record]:
    """The next ``batch`` live semantic memories of ``tenant`` after ``cursor``."""
    # Scopes are never empty, so ('', '', '') precedes every identity.
    after = cursor or Identity("", "", "")
    rows: list[asyncpg.Record] = await conn.fetch(statements.reindex_batch(), tenant, *after, batch)
    return rows


async def write_reindexed(
    statements: Statements,
    table: str,
    records: list[tuple[Any, ...]],
    cursor: str,
    conn: asyncpg.Connection,
) -> None:
    """Store re-embedded vectors and the position they reach."""
    # The vectors and the position move together: a crash never skips a batch.
    async with conn.transaction():
        await conn.executemany(statements.set_embeddings(), records)
        await conn.execute(statements.save_reindex_cursor(), table, cursor)


async def build_vector_index(
    statements: Statements, maintenance_work_mem: str, timeout: float, conn: asyncpg.Connection
) -> None:
    """Build the HNSW index in one pass."""
    async with conn.transaction():
        for sql, args in statements.build_vector_index(maintenance_work_mem):
            await conn.execute(sql, *args, timeout=timeout)


async def convert_dimension(
    old: TableLayout, new: TableLayout, timeout: float, conn: asyncpg.Connection
) -> None:
    """Retype the embedding column from ``old``'s vectors to ``new``'s, dropping them all."""
    before, after = Statements(old), Statements(new)
    async with conn.transaction():
        await conn.execute(before.drop_vector_index())
        await conn.execute(after.retype_embedding_column(), timeout=timeout)
        # Built while the column is empty, the index then grows with each batch.
        await conn.execute(new.hnsw_index_statement(), timeout=timeout)
        await conn.execute(after.record_dimension(), new.table, new.dimension, new.vector_type)


async def rebuild_contextual(
    layout: TableLayout, wanted: str, tenant: str, timeout: float, conn: asyncpg.Connection
) -> int:
    """Rebuild the full-text and trigram indexes, first switching the text search
    configuration to ``wanted`` if it differs; returns how many memories they cover."""
    statements = Statements(layout)
    async with conn.transaction():
        if layout.text_search_config != wanted:
            if not await text_search_config_exists(conn, wanted):
                raise MemoryConfigurationError(
                    f"text search configuration {wanted!r} does not exist",
                    field="text_search_config",
                )
            switched = Statements(replace(layout, text_search_config=wanted))
            await conn.execute(switched.set_tsvector_expression(), timeout=timeout)
            await conn.execute(statements.record_text_search_config(), layout.table, wanted)
        for sql in statements.reindex_contextual():
            await conn.execute(sql, timeout=timeout)
        return int(await conn.fetchval(statements.count_contextual(), tenant))


async def table_figures(
    statements: Statements, tenant: str, conn: asyncpg.Connection
) -> dict[str, Any]:
    """The tenant's row counts, and on-disk sizes of the memory table and its indexes."""
    layout = statements.layout
    table = f"{layout.schema}.{layout.table}"
    count_sql, count_args = statements.count(Restriction(tenant=tenant))
    live = await conn.fetchval(count_sql, *count_args)
    expired = await conn.fetchval(statements.count_expired(), tenant)
    sizes = await conn.fetchrow(statements.table_sizes(), table)
    assert sizes is not None
    indexes = await conn.fetch(statements.index_sizes(), table)
    return {
        "memories": int(live),
        "expired_not_cleaned": int(expired),
        "table_bytes": int(sizes["heap"]),
        "total_bytes": int(sizes["total"]),
        "index_bytes": {row["name"]: int(row["bytes"]) for row in indexes},
    }
