"""Migrations, dimension changes, reindexing: the table's life over time."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from helpers import CountingEmbedder, FailingEmbedder
from pepperpy_pg_memory import (
    DimensionMismatchError,
    HashingEmbedder,
    MemoryIndex,
    MemoryNotFoundError,
    MemoryQuery,
    MemorySchemaError,
    MemoryScope,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.identifiers import qualified
from pepperpy_pg_memory.schema import MIGRATIONS, SCHEMA_VERSION
from pepperpy_pg_memory.types import Identity


async def _registry(conn: asyncpg.Connection, schema: str, table: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        f'SELECT * FROM "{schema}".pepperpy_memory_tables WHERE table_name = $1', table
    )
    assert row is not None
    return row


async def test_start_twice_applies_migrations_once(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config()
    for _ in range(2):
        async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
            await store.store("k", "survives restarts")
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        assert (await store.retrieve("k")).value == "survives restarts"
    row = await _registry(raw_conn, config.schema_name, config.table)
    assert row["schema_version"] == SCHEMA_VERSION == len(MIGRATIONS)
    assert row["dimension"] == 16 and row["vector_type"] == "vector"


async def test_concurrent_starts_in_one_process(make_config: Any) -> None:
    config = make_config(schema=f"fresh_{uuid.uuid4().hex[:8]}")
    stores = [PostgresStorage[str, Any](config, HashingEmbedder(16)) for _ in range(6)]
    await asyncio.gather(*(store.start() for store in stores))
    try:
        await asyncio.gather(*(s.store(f"k{i}", "x") for i, s in enumerate(stores)))
        assert await stores[0].count() == 6
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_concurrent_starts_in_separate_processes(make_config: Any, pg_dsn: str) -> None:
    schema = f"procs_{uuid.uuid4().hex[:8]}"
    config = make_config(schema=schema, table="shared")
    # (On a cluster, the first of them creates the tables distributed.)
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pepperpy_pg_memory import HashingEmbedder, PostgresConfig, PostgresStorage
        async def main():
            config = PostgresConfig(dsn={pg_dsn!r}, schema={schema!r}, table="shared",
                                    distribution={config.distribution!r})
            async with PostgresStorage(config, HashingEmbedder(16)) as store:
                await store.store("from-" + sys.argv[1], "hello")
        asyncio.run(main())
        """
    )
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(n), stderr=asyncio.subprocess.PIPE
        )
        for n in range(4)
    ]
    results = await asyncio.gather(*(p.communicate() for p in processes))
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [err for _, err in results]
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        assert await store.count() == 4


async def test_a_table_not_made_by_us_is_refused(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config()
    await raw_conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{config.schema_name}"')
    await raw_conn.execute(f'CREATE TABLE "{config.schema_name}"."{config.table}" (id int)')
    with pytest.raises(MemorySchemaError, match="not created by pepperpy-pg-memory"):
        async with PostgresStorage[str, Any](config, HashingEmbedder(16)):
            pass


async def test_a_table_from_a_newer_library_is_refused(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)):
        pass
    await raw_conn.execute(
        f'UPDATE "{config.schema_name}".pepperpy_memory_tables '
        "SET schema_version = 999 WHERE table_name = $1",
        config.table,
    )
    with pytest.raises(MemorySchemaError, match="upgrade pepperpy-pg-memory"):
        async with PostgresStorage[str, Any](config, HashingEmbedder(16)):
            pass


async def test_changing_the_model_dimension_is_detected_and_migrated(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        await store.store_many((f"k{i}", f"memory text {i}") for i in range(40))

    with pytest.raises(DimensionMismatchError, match="on_embedder_change='reindex'") as caught:
        async with PostgresStorage[str, Any](config, HashingEmbedder(24)):
            pass
    assert (caught.value.expected, caught.value.actual) == (16, 24)

    migrating = config.model_copy(update={"on_dimension_mismatch": "reindex"})
    embedder = CountingEmbedder(24)
    async with PostgresStorage[str, Any](migrating, embedder) as store:
        assert store.layout.dimension == 24
        assert len(embedder.embedded_texts) == 40
        hits = await store.search(MemoryQuery(query="memory text 7", limit=1))
        assert hits[0].score > 0.99
        await store.store("new", "after the migration")
    row = await _registry(raw_conn, config.schema_name, config.table)
    assert row["dimension"] == 24 and row["reindex_cursor"] is None


async def test_dimensions_above_2000_use_halfvec(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(2_500)) as store:
        assert store.layout.vector_type == "halfvec"
        await store.store_many([("a", "red apples"), ("b", "green pears")])
        hits = await store.search(MemoryQuery(query="red apples", limit=1))
        assert hits[0].entry.key == "a" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    row = await _registry(raw_conn, config.schema_name, config.table)
    assert row["vector_type"] == "halfvec"


async def test_a_table_may_store_half_precision_vectors(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    from pepperpy_pg_memory import MemoryConfigurationError

    config = make_config(vector_type="halfvec")
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        assert store.layout.vector_type == "halfvec"
        await store.store_many([("a", "red apples"), ("b", "green pears")])
        hits = await store.search(MemoryQuery(query="red apples", limit=2))
        assert [h.entry.key for h in hits] == ["a", "b"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        similar = await store.similar("a", limit=1)
        assert [s.entry.key for s in similar] == ["b"]
    table = f'"{config.schema_name}"."{config.table}"'
    column = await raw_conn.fetchval(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = $1::regclass AND attname = 'embedding'",
        table,
    )
    assert column == "halfvec(64)"
    # The table keeps its type: opened without a choice it is used as it is, with another
    # refused before anything is written.
    async with PostgresStorage[str, Any](
        config.model_copy(update={"vector_type": None}), HashingEmbedder(64)
    ) as store:
        assert store.layout.vector_type == "halfvec"
        assert (await store.retrieve("a")).value == "red apples"
    with pytest.raises(MemoryConfigurationError, match="stores its vectors as halfvec"):
        async with PostgresStorage[str, Any](
            config.model_copy(update={"vector_type": "vector"}), HashingEmbedder(64)
        ):
            pass
    with pytest.raises(MemoryConfigurationError, match="use vector_type='halfvec'"):
        async with PostgresStorage[str, Any](
            make_config(vector_type="vector"), HashingEmbedder(2_500)
        ):
            pass


async def test_unindexable_dimension_is_a_configuration_error(make_config: Any) -> None:
    from pepperpy_pg_memory import MemoryConfigurationError

    with pytest.raises(MemoryConfigurationError, match="at most 4000"):
        async with PostgresStorage[str, Any](make_config(), HashingEmbedder(5_000)):
            pass


async def test_reindex_semantic_re_embeds_everything_with_progress(make_config: Any) -> None:
    embedder = CountingEmbedder(16)
    async with PostgresStorage[str, Any](make_config(), embedder) as store:
        await store.store_many((f"k{i:03d}", f"text {i}") for i in range(50))
        await store.store("words-only", "no vector", indices={MemoryIndex.CONTEXTUAL})
        embedder.batches.clear()
        progress: list[tuple[int, int]] = []
        count = await store.reindex(
            MemoryIndex.SEMANTIC, batch_size=20, progress=lambda d, t: progress.append((d, t))
        )
        assert count == 50
        assert sorted(embedder.embedded_texts) == sorted(f"text {i}" for i in range(50))
        assert progress == [(20, 50), (40, 50), (50, 50)]


async def _fifty_texts(config: PostgresConfig) -> None:
    """Fill the table with k000..k049 ("text 0".."text 49"), one owner (global)."""
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        await store.store_many((f"k{i:03d}", f"text {i}") for i in range(50))


async def test_backfill_positions_move_beside_their_table_on_upgrade(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    # Before schema 17 the positions were kept schema-wide, one row per table, backfill and
    # tenant; an upgrade copies this table's, so a finished backfill is not walked again.
    config = make_config(background_backfill=False)
    async with PostgresStorage[str, Any](config, CountingEmbedder(16)) as store:
        await store.store("k", "written before the upgrade")
    schema, table = config.schema_name, config.table
    await raw_conn.execute(f'DROP TABLE "{schema}"."{table}_backfills"')
    await raw_conn.execute(
        f'UPDATE "{schema}".pepperpy_memory_tables SET schema_version = 16 WHERE table_name = $1',
        table,
    )
    shared = f'"{schema}".pepperpy_memory_backfills'
    await raw_conn.executemany(
        f"INSERT INTO {shared} (table_name, name, tenant, position, rows_done, finished_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (table_name, name, tenant) DO UPDATE "
        "SET position = excluded.position, rows_done = excluded.rows_done, "
        "finished_at = excluded.finished_at",
        [
            (table, "terms", "", ["global", "", "k"], 1, datetime.now(UTC)),
            (table, "managed", "", ["global", "", "k"], 1, datetime.now(UTC)),
            (table, "reembed", "acme", ["user", "ana", "k7"], 7, None),
            (f"{table}_other", "terms", "", None, 0, None),  # another table's: left there
        ],
    )
    async with PostgresStorage[str, Any](config, CountingEmbedder(16)) as store:
        assert (await store.stats())["backfill_pending"] is False
    rows = await raw_conn.fetch(
        f"SELECT tenant, name, position, rows_done, finished_at IS NOT NULL AS finished "
        f'FROM "{schema}"."{table}_backfills" ORDER BY tenant, name'
    )
    assert [tuple(row) for row in rows] == [
        ("", "history_vectors", None, 0, True),  # (nothing to do: registered finished)
        ("", "managed", ["global", "", "k"], 1, True),
        ("", "terms", ["global", "", "k"], 1, True),
        ("acme", "reembed", ["user", "ana", "k7"], 7, False),
    ]
    assert (
        await raw_conn.fetchval(
            f"SELECT count(*) FROM {shared} WHERE table_name = $1", f"{table}_other"
        )
        == 1
    )


async def test_interrupted_reindex_resumes_where_it_stopped(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config()
    await _fifty_texts(config)
    failing = FailingEmbedder(16, fail_on_call=3)  # batches 1 and 2 succeed, 3 crashes
    async with PostgresStorage[str, Any](config, failing) as store:
        with pytest.raises(RuntimeError, match="model crashed"):
            await store.reindex(MemoryIndex.SEMANTIC, batch_size=10)
    # The position is kept per tenant with the online backfills': a whole identity (scope,
    # scope_id, key), in key order per owner.
    walk = (
        f'SELECT * FROM "{config.schema_name}"."{config.table}_backfills" WHERE name = \'reembed\''
    )
    row = await raw_conn.fetchrow(walk)
    assert (row["tenant"], row["position"], row["rows_done"]) == ("", ["global", "", "k019"], 20)
    assert row["finished_at"] is None

    embedder = CountingEmbedder(16)
    async with PostgresStorage[str, Any](config, embedder) as store:
        assert await store.reindex(MemoryIndex.SEMANTIC, batch_size=10) == 30
        assert min(embedder.embedded_texts, key=lambda t: int(t.split()[1])) == "text 20"
        row = await raw_conn.fetchrow(walk)
        assert row["finished_at"] is not None and row["rows_done"] == 50
        assert await store.reindex(MemoryIndex.SEMANTIC, batch_size=10, resume=False) == 50
        # Finished: the next call starts over.
        assert await store.reindex(MemoryIndex.SEMANTIC, batch_size=10) == 50
    row = await _registry(raw_conn, config.schema_name, config.table)
    assert row["reindex_cursor"] is None


async def test_a_reindex_interrupted_under_an_earlier_release_resumes(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config()
    await _fifty_texts(config)
    # Where releases before the backfill table kept the position of an interrupted reindex.
    await raw_conn.execute(
        f'UPDATE "{config.schema_name}".pepperpy_memory_tables SET reindex_cursor = $2 '
        "WHERE table_name = $1",
        config.table,
        json.dumps(["", "global", "", "k029"]),
    )
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        assert await store.reindex(MemoryIndex.SEMANTIC, batch_size=10) == 20
    row = await _registry(raw_conn, config.schema_name, config.table)
    assert row["reindex_cursor"] is None


async def test_reindex_contextual_switches_the_language(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        await store.store("pt", "os gatos estão dormindo")
        await store.store("en", "the cats are sleeping")
        # english stemming: "sleeping" matches "sleep"
        hits = await store.search(MemoryQuery(query="sleep", index_type=MemoryIndex.CONTEXTUAL))
        assert [h.entry.key for h in hits] == ["en"]

    portuguese = config.model_copy(update={"text_search_config": "portuguese"})
    async with PostgresStorage[str, Any](portuguese, HashingEmbedder(16)) as store:
        assert store.layout.text_search_config == "english"  # until reindexed
        assert await store.reindex(MemoryIndex.CONTEXTUAL) == 2
        assert store.layout.text_search_config == "portuguese"
        hits = await store.search(MemoryQuery(query="gato", index_type=MemoryIndex.CONTEXTUAL))
        assert [h.entry.key for h in hits] == ["pt"]
        # A memory written after the switch is indexed in the new language too, and the
        # terms keep their index.
        await store.store("pt2", "as gatas estavam correndo")
        hits = await store.search(MemoryQuery(query="gata", index_type=MemoryIndex.CONTEXTUAL))
        assert sorted(h.entry.key for h in hits) == ["pt", "pt2"]
        assert await raw_conn.fetchval(
            "SELECT to_tsvector('portuguese', content) = terms "
            f"FROM {store.layout.qualified_table} WHERE key = 'pt2'"
        )
        index = store.layout.qualified_index("terms_idx")
        assert await raw_conn.fetchval("SELECT to_regclass($1) IS NOT NULL", index)
    row = await _registry(raw_conn, config.schema_name, config.table)
    assert row["text_search_config"] == "portuguese"


async def test_reindex_rejects_query_modes(storage: PostgresStorage[str, Any]) -> None:
    with pytest.raises(MemoryValidationError, match="query mode"):
        await storage.reindex(MemoryIndex.HYBRID)
    with pytest.raises(MemoryValidationError):
        await storage.reindex("nonsense")


async def test_unknown_text_search_config_fails_at_start(make_config: Any) -> None:
    from pepperpy_pg_memory import MemoryConfigurationError

    with pytest.raises(MemoryConfigurationError, match="klingon"):
        async with PostgresStorage[str, Any](
            make_config(text_search_config="klingon"), HashingEmbedder(16)
        ):
            pass


async def test_vectors_stay_in_the_row(make_config: Any, raw_conn: asyncpg.Connection) -> None:
    # A 384-dimensional vector and a few hundred characters of text come to about 2.3 kB,
    # past PostgreSQL's default 2 kB TOAST threshold: the vector would move out of the row.
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(384)) as store:
        await store.store_many(
            {"key": f"k{i}", "value": f"memory {i} " + "with a longer text " * 15}
            for i in range(50)
        )
        toasted = await raw_conn.fetchval(
            "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = $1::regclass",
            store.layout.regclass,
        )
    assert toasted == 0


async def test_a_ttl_refresh_leaves_the_memory_row_alone(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    # A refresh is a narrow row beside the memory: the memory's own row (about 2 KB with its
    # vector, in every index) is neither rewritten nor locked. Sweeps of expired memories
    # read a BRIN index on the rows' own expiry.
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        table = store.layout.qualified_table
        keys = [f"note-{i}" for i in range(40)]
        await store.store_many(
            [{"key": key, "value": f"note {i}", "ttl": 3600} for i, key in enumerate(keys)],
            scope="user",
            scope_id="ana",
        )
        kinds = await raw_conn.fetch(
            "SELECT a.amname, pg_get_indexdef(i.indexrelid) AS definition FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
            "WHERE i.indrelid = $1::regclass",
            table,
        )
        on_expiry = [row["amname"] for row in kinds if "(expires_at)" in row["definition"]]
        assert on_expiry == ["brin"]

        async def versions() -> list[tuple[Any, ...]]:
            rows = await raw_conn.fetch(
                f"SELECT key, xmin::text, ctid::text, expires_at FROM {table} ORDER BY key"
            )
            return [tuple(row) for row in rows]

        before = await versions()
        read = keys[::8]
        assert await store.touch(read, 7200, scope="user", scope_id="ana") == len(read)
        assert await versions() == before
        refreshed = await raw_conn.fetchval(
            f"SELECT count(*) FROM {store.layout.qualified_refreshes}"
        )
        assert refreshed == len(read)
        # The memories are what they were, with the new expiry.
        entry = await store.retrieve("note-8", scope="user", scope_id="ana")
        assert entry.value == "note 8" and entry.version == 1
        assert entry.expires_at is not None and entry.expires_at > entry.created_at.replace(
            microsecond=0
        ) + timedelta(seconds=7000)
        unread = await store.retrieve("note-9", scope="user", scope_id="ana")
        assert unread.expires_at is not None
        assert unread.expires_at < unread.created_at + timedelta(seconds=3700)


async def test_the_upgrade_to_refreshes_gives_them_the_memories_protections(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    # A table upgraded to schema 23 gets its refreshes table with what the memories have:
    # the grants of the roles bound to its tenants, and the tenant policy when the memories
    # have row-level security (whether or not this start asks for it).
    config = make_config()
    role = f"pepperpy_refreshing_{uuid.uuid4().hex[:8]}"
    await raw_conn.execute(f"CREATE ROLE {role} NOLOGIN")
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        await store.store("note", "tea at five", ttl=3600)
        await store.grant_tenant(role, "acme")
        layout = store.layout
    # Back to schema 22, its memories under row-level security.
    await raw_conn.execute(f"DROP TABLE {layout.qualified_refreshes}")
    await raw_conn.execute(f"ALTER TABLE {layout.qualified_table} ENABLE ROW LEVEL SECURITY")
    await raw_conn.execute(
        f"UPDATE {layout.registry} SET schema_version = 22 WHERE table_name = $1", layout.table
    )
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        assert store.layout.version == SCHEMA_VERSION
        assert await store.touch(["note"], 7200) == 1
        entry = await store.retrieve("note")
        assert entry.expires_at is not None and entry.expires_at > entry.created_at + timedelta(
            seconds=7000
        )
    refreshes = layout.qualified_refreshes
    secured = await raw_conn.fetchrow(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1::regclass",
        refreshes,
    )
    assert tuple(secured) == (True, True)
    assert (
        await raw_conn.fetchval(
            "SELECT count(*) FROM pg_policy WHERE polrelid = $1::regclass", refreshes
        )
        == 1
    )
    assert await raw_conn.fetchval("SELECT has_table_privilege($1, $2, 'INSERT')", role, refreshes)
    await raw_conn.execute(f"ALTER TABLE {layout.qualified_table} DISABLE ROW LEVEL SECURITY")


async def test_a_ttl_refresh_calls_no_version_trigger(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    # The trigger that numbers versions looks at updated_at, version and the history flag;
    # an UPDATE that changes none of them (a refresh) leaves it uncalled. EXPLAIN ANALYZE
    # lists the row triggers that fired.
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        table = store.layout.qualified_table
        await store.store("note", "tea at five", scope="user", scope_id="ana", ttl=3600)
        owner = "scope = 'user' AND scope_id = 'ana' AND key = 'note'"

        async def fired(assignments: str) -> str:
            async with raw_conn.transaction():
                plan = await raw_conn.fetch(
                    f"EXPLAIN (ANALYZE) UPDATE {table} SET {assignments} WHERE {owner}"
                )
            return "\n".join(row[0] for row in plan)

        refresh = await fired("expires_at = now() + interval '2 hours'")
        assert "_version" not in refresh
        rewrite = await fired("content = 'tea at six', updated_at = clock_timestamp()")
        assert f"Trigger {config.table}_version_update: " in rewrite
        entry = await store.retrieve("note", scope="user", scope_id="ana")
        assert entry.version == 2


async def test_the_fillfactor_of_new_pages_is_configurable(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    # Stores that refresh TTLs on every read give each row room for its next version.
    config = make_config(fillfactor=50)
    table = f'"{config.schema_name}"."{config.table}"'

    async def options() -> list[str]:
        found = await raw_conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = $1::regclass", table
        )
        return list(found or [])

    async with PostgresStorage[str, Any](
        config.model_copy(update={"fillfactor": None}), HashingEmbedder(16)
    ):
        pass
    # Unset, one server fills new pages (PostgreSQL's own 100: schema 28); where Citus is
    # installed they keep schema 21's room (a refresh rewrites the row there).
    expected = [] if config.distribution is None else ["fillfactor=70"]
    assert [option for option in await options() if option.startswith("fillfactor")] == expected

    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        await store.store("note", "tea at five", ttl=3600)
    assert "fillfactor=50" in await options()
    # Unset, the table keeps what it has; set again, it changes.
    async with PostgresStorage[str, Any](
        config.model_copy(update={"fillfactor": None}), HashingEmbedder(16)
    ):
        pass
    assert "fillfactor=50" in await options()
    async with PostgresStorage[str, Any](
        config.model_copy(update={"fillfactor": 60}), HashingEmbedder(16)
    ) as store:
        assert (await store.retrieve("note")).value == "tea at five"
    assert "fillfactor=60" in await options()


async def test_a_role_that_does_not_own_the_table_leaves_its_fillfactor(
    make_config: Any, raw_conn: asyncpg.Connection, ordinary: dict[str, str], caplog: Any
) -> None:
    # A tuning of pages, not a condition of the store: the LangGraph store asks for 50 on a
    # table that an administrator may own; the store starts all the same, and says so.
    from pepperpy_pg_memory.database import connect
    from pepperpy_pg_memory.schema import ensure_fillfactor

    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        layout = store.layout
    await raw_conn.execute(f'GRANT USAGE ON SCHEMA "{config.schema_name}" TO pepperpy_ordinary')
    async with connect(config, ordinary["dsn"]) as session:
        assert await ensure_fillfactor(session, layout, 50) is False
    assert "fillfactor stays as it is" in caplog.text
    options = await raw_conn.fetchval(
        "SELECT reloptions FROM pg_class WHERE oid = $1::regclass", layout.qualified_table
    )
    kept = [option for option in options or [] if option.startswith("fillfactor=")]
    assert kept == ([] if config.distribution is None else ["fillfactor=70"])


async def test_the_terms_function_gives_what_it_gave_before_schema_24(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    # Schema 24 moved the identifier function's first test into the terms function, so that
    # the terms function is inlined and texts without identifiers skip the call: the terms of
    # every text are what they were.
    schema = storage.layout.schema
    texts = [
        "Ana is allergic to peanuts",
        "Order A-77812 shipped on 2024-03-05 from gate B12",
        "release v2.3.1 fixed CVE-2024-1234 (see build_42/x86_64)",
        "room 12B, flight TP1234 #7; e-mail a.b@example.com",
        "café 3ª edição, Straße 9a",
        "",
        "   ",
        "123 456",
        "abc-def",
        None,
    ]
    before = await raw_conn.fetch(
        f"SELECT t, to_tsvector('english', t) || array_to_tsvector("
        f'"{schema}".pepperpy_identifier_terms(t)) AS terms FROM unnest($1::text[]) t',
        texts,
    )
    now = await raw_conn.fetch(
        f"SELECT t, \"{schema}\".pepperpy_terms('english', t) AS terms FROM unnest($1::text[]) t",
        texts,
    )
    assert [(row["t"], row["terms"]) for row in now] == [(row["t"], row["terms"]) for row in before]
    assert any(row["terms"] is not None and "77812" in row["terms"] for row in now)
    assert now[-1]["terms"] is None
    # Inlined: the plan computes to_tsvector itself, and calls the identifier function only
    # inside the test for texts that may hold one.
    plan = "\n".join(
        row[0]
        for row in await raw_conn.fetch(
            f"EXPLAIN (VERBOSE) SELECT \"{schema}\".pepperpy_terms('english', t) "
            "FROM unnest($1::text[]) t",
            texts,
        )
    )
    assert "to_tsvector" in plan and "pepperpy_terms" not in plan
    assert "CASE WHEN" in plan


ANA: dict[str, Any] = {"scope": MemoryScope.USER, "scope_id": "ana"}


async def test_analyze_leaves_the_deduplication_hash_alone_and_the_look_up_keeps_its_index(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    # ANALYZE hashed every sampled text for the deduplication index's statistics, a third of
    # its time after a bulk load; the look-up through that index needs none (schema 24).
    config = make_config(dedupe_threshold=0.95)
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store_many(
            {"key": f"k{i}", "value": f"memory number {i} of user {i % 10}", **ANA}
            for i in range(2_000)
        )
        layout = store.layout
        await raw_conn.execute(f"ANALYZE {layout.qualified_table}")
        index = f'"{config.schema_name}"."{config.table}_dedupe_idx"'
        assert (
            await raw_conn.fetchval(
                "SELECT attstattarget FROM pg_attribute "
                "WHERE attrelid = $1::regclass AND attnum = 1",
                index,
            )
            == 0
        )
        # (On a Citus cluster the statistics are the shards', on the workers.)
        sampled = (
            []
            if layout.distributed
            else await raw_conn.fetch(
                "SELECT tablename, attname FROM pg_stats WHERE schemaname = $1 "
                "AND tablename IN ($2, $3)",
                config.schema_name,
                config.table,
                f"{config.table}_dedupe_idx",
            )
        )
        assert layout.distributed or {
            row["attname"] for row in sampled if row["tablename"] == config.table
        } >= {"key", "scope_id"}
        assert not [row for row in sampled if row["tablename"] != config.table]
        look_up = store._ready.statements.find_duplicate(
            "", Identity("user", "ana", "new"), "memory number 7 of user 7", None, None
        )
        plan = "\n".join(
            row[0] for row in await raw_conn.fetch("EXPLAIN " + look_up.sql, *look_up.args)
        )
        assert "_dedupe_idx" in plan
        entry = await store.store("new", "Memory number 7 of  user 7", dedupe=True, **ANA)
        assert entry.deduplicated and entry.key == "k7"


async def test_the_refresh_check_is_not_a_function_the_planner_tries_to_inline(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    # Every read names the refresh check; a SQL function holding a subquery is parsed at
    # every planning only to be found not inlinable (schema 25 makes it PL/pgSQL).
    if storage.layout.distributed:
        pytest.skip("on a cluster the statements do not call the refresh check")
    language = await raw_conn.fetchval(
        "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
        "WHERE p.oid = $1::regproc",
        storage.layout.qualified_refreshed_function,
    )
    assert language == "plpgsql"
    # And it answers as before: a refreshed memory past its own expiry stays live.
    await storage.store("tea", "Ana likes green tea", **ANA, ttl=3600)
    assert await storage.touch(["tea"], 7200, **ANA) == 1
    table, refreshes = storage.layout.qualified_table, storage.layout.qualified_refreshes
    past = datetime.now(UTC) - timedelta(minutes=1)
    await raw_conn.execute(f"UPDATE {table} SET expires_at = $1", past)
    await raw_conn.execute(f"UPDATE {refreshes} SET refreshed_from = $1", past)
    assert (await storage.retrieve("tea", **ANA)).key == "tea"
    await raw_conn.execute(f"UPDATE {refreshes} SET expires_at = now() - interval '1 second'")
    with pytest.raises(MemoryNotFoundError):
        await storage.retrieve("tea", **ANA)


async def test_the_version_and_quota_triggers_plan_their_look_ups_once_per_session(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    # The store's sessions plan each statement for its values; the version and quota
    # triggers' primary-key look-ups and counts need no such plan, and keep their own
    # setting (schema 26), on one server.
    if storage.layout.distributed:
        pytest.skip("Citus plans no distributed query a generic plan leaves parameters in")
    schema = storage.layout.schema
    for function in (f"{storage.layout.table}_number_version", "pepperpy_enforce_quota"):
        config = await raw_conn.fetchval(
            "SELECT proconfig FROM pg_proc WHERE oid = $1::regproc", qualified(schema, function)
        )
        assert config == ["plan_cache_mode=force_generic_plan"], function
    await storage.store("tea", "Ana likes green tea", **ANA)
    await storage.store("tea", "Ana likes jasmine tea", **ANA)
    assert [v.version for v in await storage.history("tea", **ANA)] == [2, 1]
