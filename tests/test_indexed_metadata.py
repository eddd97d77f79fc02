"""Expression indexes on metadata fields (``PostgresConfig(indexed_metadata=...)``): made at
start, recorded, never dropped, used by range filters without changing what they match."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryConfigurationError,
    MemoryQuery,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.schema import (
    METADATA_INDEXES,
    metadata_index_name,
    metadata_statistics_name,
)
from pepperpy_pg_memory.search_sql import Page

INDEXED = {"priority": "numeric", "due": "text", "user.level": "numeric"}
# Values of every JSON type under the indexed keys: the index expression must accept them all
# (a cast of "high" to numeric would make the write fail) and filters must keep their meaning.
ROWS = [
    {"priority": 1, "due": "2026-01-05", "user": {"level": 3}},
    {"priority": 5.5, "due": "2026-03-01", "user": {"level": 7}},
    {"priority": 9, "due": "2025-12-31"},
    {"priority": "high", "due": 20260101},
    {"priority": None, "due": None, "user": {"level": "x"}},
    {"priority": [1, 2], "user": "flat"},
    {},
]
FILTERS: list[dict[str, Any]] = [
    {"priority": {"$gte": 2}},
    {"priority": {"$gt": 1, "$lte": 9}},
    {"priority": {"$lt": 6}},
    {"due": {"$gte": "2026-01-01"}},
    {"due": {"$lt": "2026"}},
    {"user.level": {"$gt": 4}},
    {"$or": [{"priority": {"$lt": 2}}, {"due": {"$gt": "2026-02"}}]},
    {"$not": {"priority": {"$gte": 5}}},
]


async def _indexes(raw_conn: asyncpg.Connection, config: PostgresConfig) -> set[str]:
    rows = await raw_conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = $2",
        config.schema_name,
        config.table,
    )
    return {row["indexname"] for row in rows}


def test_the_fields_are_checked() -> None:
    with pytest.raises(MemoryConfigurationError, match="indexed_metadata"):
        PostgresConfig(indexed_metadata={"bad key": "numeric"})
    with pytest.raises(MemoryConfigurationError, match="indexed_metadata"):
        PostgresConfig(indexed_metadata={"priority": "float"})
    config = PostgresConfig(indexed_metadata={"b": "text", "a.c": "numeric"})
    assert config.indexed_fields == ((("a", "c"), "numeric"), (("b",), "text"))


async def test_filters_match_the_same_rows_with_and_without_the_indexes(
    make_config: Any,
) -> None:
    plain_config = make_config()
    indexed_config = make_config(table=plain_config.table, indexed_metadata=INDEXED)
    async with PostgresStorage[str, Any](plain_config, HashingEmbedder(16)) as plain:
        await plain.store_many(
            {"key": f"k{i}", "value": f"row {i}", "metadata": metadata}
            for i, metadata in enumerate(ROWS)
        )
        async with PostgresStorage[str, Any](indexed_config, HashingEmbedder(16)) as indexed:
            # A value the numeric expression cannot cast is stored like any other.
            await indexed.store("late", "late row", metadata={"priority": "urgent", "due": "x"})
            for spec in FILTERS:
                expected = sorted(e.key for e in await plain.list(filter=spec, limit=100))
                got = sorted(e.key for e in await indexed.list(filter=spec, limit=100))
                assert got == expected, spec
            assert sorted(
                e.key for e in await indexed.list(filter={"priority": {"$gte": 2}}, limit=100)
            ) == ["k1", "k2"]
            assert sorted(
                e.key for e in await indexed.list(filter={"due": {"$lt": "2026"}}, limit=100)
            ) == ["k2"]


async def test_start_adds_and_records_the_indexes_once_and_never_drops_them(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config(indexed_metadata={"priority": "numeric"})
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        layout = store.layout
    name = metadata_index_name(layout, ("priority",), "numeric")
    assert name in await _indexes(raw_conn, config)
    # With statistics on the field's JSON type, which range filters also test.
    assert (
        await raw_conn.fetchval(
            "SELECT count(*) FROM pg_statistic_ext WHERE stxname = $1",
            metadata_statistics_name(layout, ("priority",)),
        )
        == 1
    )
    registry = f'"{config.schema_name}".{METADATA_INDEXES}'
    recorded = await raw_conn.fetch(
        f"SELECT path, kind, index_name FROM {registry} WHERE table_name = $1", config.table
    )
    assert [tuple(r) for r in recorded] == [(["priority"], "numeric", name)]
    built = await raw_conn.fetchval(
        "SELECT oid FROM pg_class WHERE relname = $1 AND relnamespace = $2::regnamespace",
        name,
        config.schema_name,
    )
    # Started again with the same fields: nothing rebuilt; without them: nothing dropped.
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)):
        pass
    without = make_config(table=config.table)
    async with PostgresStorage[str, Any](without, HashingEmbedder(16)):
        pass
    assert (
        await raw_conn.fetchval(
            "SELECT oid FROM pg_class WHERE relname = $1 AND relnamespace = $2::regnamespace",
            name,
            config.schema_name,
        )
        == built
    )


async def test_a_selective_range_is_served_by_the_index(make_config: Any) -> None:
    config = make_config(indexed_metadata={"priority": "numeric"})
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store_many(
            {"key": f"k{i}", "value": f"memory number {i}", "metadata": {"priority": i % 500}}
            for i in range(3_000)
        )
        async with store.database.pool.acquire() as conn:
            await conn.execute(f"ANALYZE {store.layout.qualified_table}")
        query = MemoryQuery(query="memory number 7", filter={"priority": {"$lt": 2}}, limit=5)
        vector = await store.query_vector("memory number 7")
        restriction = store._ready.restriction(None, None, None, query.filter)
        statement = store._ready.searches.semantic_search(
            vector, restriction, Page(5), passages=False
        )
        async with store.database.pool.acquire() as conn:
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + statement.sql, *statement.args)
        name = metadata_index_name(store.layout, ("priority",), "numeric")
        assert name in json.dumps(json.loads(plan))
        results = await store.search(query)
        assert len(results) == 5
        assert all(r.entry.metadata["priority"] < 2 for r in results)
