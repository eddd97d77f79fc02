"""Upgrading a database written by release 0.1 (schema 3, the key alone as primary key)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from langchain_pepperpy import PepperpyChatMessageHistory
from langgraph_pepperpy import PepperpyStore
from pepperpy_pg_memory import (
    MANAGED_FIELD,
    HashingEmbedder,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.schema import IDENTITY_COLUMNS, SCHEMA_VERSION

RELEASE_0_1 = Path(__file__).parent / "fixtures" / "release_0_1_v3.sql"
# What each memory of the fixture is and whose, as release 0.1 wrote it.
OWNERS = {
    "global-fact": ("global", ""),
    "session-note": ("session", "s-1"),
    "ana-allergy": ("user", "ana"),
    "agent-procedure": ("agent", "support-bot"),
    "bruno-pref": ("user", "bruno"),
    "kv-only": ("user", "ana"),
    "lg:users/ana/memories/#food": ("user", "ana"),
    "lg:users/ana/notas/#caf%C3%A9%20da%20manh%C3%A3": ("user", "ana"),
    "lg:docs/#readme": ("global", ""),
}


async def _load_release_0_1(dsn: str) -> str:
    """The fixture, loaded into a schema of its own; returns the schema's name."""
    schema = f"v3_{uuid.uuid4().hex[:8]}"
    sql = RELEASE_0_1.read_text().replace("legacy_v3", schema)
    conn = await asyncpg.connect(dsn)
    try:
        # As on the server release 0.1 ran against: its first start created these.
        await conn.execute(
            "CREATE EXTENSION IF NOT EXISTS vector; CREATE EXTENSION IF NOT EXISTS pg_trgm"
        )
        await conn.execute(sql)
    finally:
        await conn.close()
    return schema


def _snapshot_sql(schema: str) -> str:
    return (
        f"SELECT tenant, scope, scope_id, key, value::text, created_at, updated_at, expires_at, "
        f'embedding::text AS embedding FROM "{schema}".memories ORDER BY key'
    )


async def test_a_release_0_1_database_upgrades_in_place(
    pg_dsn: str, raw_conn: asyncpg.Connection
) -> None:
    schema = await _load_release_0_1(pg_dsn)
    before = await raw_conn.fetch(_snapshot_sql(schema))
    assert len(before) == 11 and {r["key"] for r in before} >= set(OWNERS)
    config = PostgresConfig(dsn=pg_dsn, schema=schema, table="memories")

    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        # Every row is kept as it was: owner, value, timestamps, embedding (not re-embedded).
        after = await raw_conn.fetch(_snapshot_sql(schema))
        assert [dict(r) for r in after] == [dict(r) for r in before]
        for key, (scope, scope_id) in OWNERS.items():
            entry = await store.retrieve(key)
            assert (entry.scope.value, entry.scope_id) == (scope, scope_id)
        hits = await store.search(
            MemoryQuery(
                query="peanuts allergy", index_type=MemoryIndex.HYBRID, scope="user", scope_id="ana"
            )
        )
        assert hits[0].entry.key == "ana-allergy"
        # Ana's key can now be reused by Bruno without touching hers.
        await store.store("ana-allergy", "not Bruno's allergy", scope="user", scope_id="bruno")
        assert (await store.retrieve("ana-allergy", scope="user", scope_id="ana")).value == {
            "content": "Ana is allergic to peanuts"
        }

        # LangGraph items and the chat history written by 0.1 keep their identity. (Their
        # search sees them once the upgrade's backfill has marked them as the adapter's
        # records: waited for here, not raced.)
        await store.complete_backfills()
        graph = PepperpyStore(store)
        food = await graph.aget(("users", "ana", "memories"), "food")
        assert food is not None and food.value == {"text": "Ana loves ramen"}
        cafe = await graph.aget(("users", "ana", "notas"), "café da manhã")
        assert cafe is not None and cafe.value == {"text": "Ana toma café"}
        listed = await graph.asearch(("users", "ana"), limit=10)
        assert sorted(item.key for item in listed) == ["café da manhã", "food"]
        assert await graph.alist_namespaces() == [
            ("docs",),
            ("users", "ana", "memories"),
            ("users", "ana", "notas"),
        ]
        # Written again, the non-ASCII item moves to the current encoding: one item, not two.
        await graph.aput(("users", "ana", "notas"), "café da manhã", {"text": "com açúcar"})
        listed = await graph.asearch(("users", "ana", "notas"), limit=10)
        assert [(i.key, i.value) for i in listed] == [("café da manhã", {"text": "com açúcar"})]
        assert await store.count(key_prefix="lg:users/ana/notas/") == 1
        await graph.adelete(("users", "ana", "memories"), "food")
        assert await graph.aget(("users", "ana", "memories"), "food") is None

        # Migration 8: an old memory is version 1, valid since it was created; its history
        # starts with its row, and a change (here LangGraph's delete) records that row first.
        fact = await store.retrieve("global-fact")
        assert (fact.version, fact.valid_from, fact.valid_to) == (1, fact.created_at, None)
        # Migration 9: importance 0.5, no reads counted yet; reads are counted from now.
        assert (fact.importance, fact.access_count, fact.last_accessed_at) == (0.5, 0, None)
        await store.flush_access_counts()
        assert (await store.retrieve("global-fact")).access_count >= 1
        assert [(v.version, v.operation) for v in await store.history("global-fact")] == [
            (1, "create")
        ]
        food_history = await store.history(
            "lg:users/ana/memories/#food", scope="user", scope_id="ana"
        )
        assert [(v.version, v.operation) for v in food_history] == [(2, "delete"), (1, "create")]
        moment = await raw_conn.fetchval("SELECT clock_timestamp()")
        assert (await store.retrieve("global-fact", as_of=moment)).value == fact.value
        then = await store.search(
            MemoryQuery(query="peanuts allergy", scope="user", scope_id="ana", as_of=moment)
        )
        assert then[0].entry.key == "ana-allergy"
        restored = await store.restore(
            "lg:users/ana/memories/#food", 1, scope="user", scope_id="ana"
        )
        assert restored.version == 3
        assert (await graph.aget(("users", "ana", "memories"), "food")) is not None

        # Migration 27: a current version's vector is its row's alone. Replaced, the
        # upgraded fact's first version is recorded with the vector its row had; the new
        # current version reads its vector from the row.
        old_fact = await store.retrieve("global-fact", include_embedding=True)
        owner = {"scope": old_fact.scope, "scope_id": old_fact.scope_id or None}
        await store.store("global-fact", "a newer fact for everyone", **owner)
        current = await store.retrieve("global-fact", include_embedding=True)
        newer, older = await store.history("global-fact", **owner, include_embedding=True)
        assert (newer.version, older.version) == (2, 1)
        assert older.embedding == pytest.approx(old_fact.embedding)
        assert newer.embedding == pytest.approx(current.embedding)
        assert newer.embedding != pytest.approx(older.embedding)

        # Migration 28: on one server new pages are filled again (21 had left 30% free).
        options = await raw_conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = $1::regclass", f'"{schema}".memories'
        )
        assert not any(option.startswith("fillfactor=") for option in options or [])
        # Migration 29: the words are the terms alone; the full-text column and its index
        # are gone, and 0.1's memories are found by their words (before and after the
        # backfill gives them terms: see test_contextual_recall).
        assert not await raw_conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass "
            "AND attname = 'tsv' AND NOT attisdropped)",
            f'"{schema}".memories',
        )
        assert (
            await raw_conn.fetchval("SELECT to_regclass($1)", f'"{schema}".memories_tsv_idx')
            is None
        )
        words = await store.search(
            MemoryQuery(
                query="allergic", index_type=MemoryIndex.CONTEXTUAL, scope="user", scope_id="ana"
            )
        )
        assert [hit.entry.key for hit in words] == ["ana-allergy"]

        # Migration 5 added an empty passages table: an upgraded item gains per-field
        # vectors when written again, for its owner only.
        passages = f'"{schema}".memories_passages'
        assert await raw_conn.fetchval(f"SELECT count(*) FROM {passages}") == 0
        await graph.aput(
            ("users", "ana", "memories"),
            "trip",
            {"title": "Lisbon", "note": "ramen"},
            ["title", "note"],
        )
        owners = await raw_conn.fetch(
            f"SELECT scope, scope_id, content FROM {passages} ORDER BY position"
        )
        assert [tuple(row) for row in owners] == [
            ("user", "ana", "Lisbon"),
            ("user", "ana", "ramen"),
        ]

        history = PepperpyChatMessageHistory("s-1", storage=store)
        assert [m.content for m in await history.aget_messages()] == [
            "Hi, I need a hotel in Lisbon",
            "Sure, for which dates?",
        ]

        # Migration 11's backfill marks 0.1's adapter records (chat messages, LangGraph
        # items), metadata only: no new version. Consolidation then leaves them alone.
        await store.complete_backfills()
        marked = await raw_conn.fetch(
            f"SELECT key, metadata ->> '{MANAGED_FIELD}' AS adapter, version "
            f"FROM \"{schema}\".memories WHERE metadata ? '{MANAGED_FIELD}' ORDER BY key"
        )
        adapters = {row["key"]: row["adapter"] for row in marked}
        assert set(adapters.values()) == {"langchain-chat-history", "langgraph-store"}
        assert sum(key.startswith("chat:s-1:") for key in adapters) == 2
        assert adapters["lg:docs/#readme"] == "langgraph-store"
        assert "global-fact" not in adapters
        assert {row["version"] for row in marked if row["key"].startswith("chat:")} == {1}
        report = await store.consolidate(promote_after=1, dry_run=True)
        assert not set(report.promoted) & set(adapters)

        # Migration 20: a bulk write numbers and records its own versions; over a memory
        # from before the history (its row not recorded yet) it records that row first, as
        # the row triggers do.
        ana = {"scope": "user", "scope_id": "ana"}
        await store.store_many(
            [{"key": "ana-allergy", "value": "Ana is allergic to peanuts and cashews", **ana}]
            + [{"key": f"bulk-{i}", "value": f"bulk note number {i}", **ana} for i in range(40)]
        )
        allergy = await store.history("ana-allergy", **ana)
        assert [(v.version, v.operation) for v in allergy] == [(2, "update"), (1, "create")]
        assert allergy[1].value != allergy[0].value

        # Migration 24: the terms of every memory, 0.1's computed by the backfill, are what
        # the terms function gave before it was inlined; ANALYZE no longer samples the
        # deduplication index's hash.
        table = f'"{schema}".memories'
        identifiers = f'"{schema}".pepperpy_identifier_terms'
        terms = await raw_conn.fetch(
            f"SELECT key, terms = to_tsvector('english', content) "
            f"|| array_to_tsvector({identifiers}(content)) AS same FROM {table} "
            "WHERE terms IS NOT NULL"
        )
        assert len(terms) > 40 and all(row["same"] for row in terms)
        assert (
            await raw_conn.fetchval(
                "SELECT attstattarget FROM pg_attribute "
                "WHERE attrelid = $1::regclass AND attnum = 1",
                f'"{schema}".memories_dedupe_idx',
            )
            == 0
        )
        # Migration 25: the refresh check that every read calls is PL/pgSQL, which the
        # planner does not try to inline.
        assert (
            await raw_conn.fetchval(
                "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                "WHERE p.oid = $1::regproc",
                f'"{schema}".memories_refreshed',
            )
            == "plpgsql"
        )
        # Migration 26: the version and quota triggers plan their look-ups once per session.
        for function in ("memories_number_version", "pepperpy_enforce_quota"):
            assert await raw_conn.fetchval(
                "SELECT proconfig FROM pg_proc WHERE oid = $1::regproc",
                f'"{schema}".{function}',
            ) == ["plan_cache_mode=force_generic_plan"]

    version = await raw_conn.fetchval(
        f'SELECT schema_version FROM "{schema}".pepperpy_memory_tables'
    )
    assert version == SCHEMA_VERSION
    primary_key = await raw_conn.fetchval(
        "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_constraint c "
        "CROSS JOIN unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE c.conrelid = $1::regclass AND c.contype = 'p'",
        f"{schema}.memories",
    )
    assert tuple(primary_key) == IDENTITY_COLUMNS


# The statements release 0.1 runs on a memory table, verbatim (only the table's name differs).
RELEASE_0_1_WRITES = {
    "delete": "DELETE FROM {t} m WHERE m.key = $1 RETURNING true",
    "touch": "UPDATE {t} m SET expires_at = now() + interval '1 hour' WHERE m.key = ANY($1)",
    "sweep": (
        "DELETE FROM {t} WHERE key IN (SELECT m.key FROM {t} m WHERE m.expires_at <= now() "
        "AND m.key = ANY($1) LIMIT 1000 FOR UPDATE SKIP LOCKED)"
    ),
}


async def test_langgraph_reads_see_earlier_items_while_the_upgrade_backfill_runs(
    pg_dsn: str,
) -> None:
    # Release 0.1's LangGraph items carry only their namespace field until the backfill
    # marks them as the adapter's records: until then the adapter's reads count them too.
    schema = await _load_release_0_1(pg_dsn)
    config = PostgresConfig(dsn=pg_dsn, schema=schema, table="memories", background_backfill=False)
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        assert store.backfill_pending
        graph = PepperpyStore(store)
        before = sorted(item.key for item in await graph.asearch(("users", "ana"), limit=10))
        namespaces = await graph.alist_namespaces()
        assert before == ["café da manhã", "food"]
        await store.complete_backfills()
        assert not store.backfill_pending
        after = sorted(item.key for item in await graph.asearch(("users", "ana"), limit=10))
        assert after == before and await graph.alist_namespaces() == namespaces


async def test_a_process_still_running_release_0_1_cannot_write_after_the_upgrade(
    pg_dsn: str, raw_conn: asyncpg.Connection
) -> None:
    schema = await _load_release_0_1(pg_dsn)
    config = PostgresConfig(dsn=pg_dsn, schema=schema, table="memories")
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        await store.store("ana-allergy", "Bruno's own", scope="user", scope_id="bruno")
    before = await raw_conn.fetch(_snapshot_sql(schema))
    table = f'"{schema}".memories'
    # Release 0.1's pool connections: its application name, no client schema setting.
    old = await asyncpg.connect(pg_dsn, server_settings={"application_name": "pepperpy-pg-memory"})
    try:
        for name, statement in RELEASE_0_1_WRITES.items():
            args: list[Any] = ["ana-allergy"] if name == "delete" else [["ana-allergy"]]
            with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError) as caught:
                await old.execute(statement.format(t=table), *args)
            assert "upgraded to per-owner memory identity" in str(caught.value)
            assert "Stop every process running the older release" in (caught.value.hint or "")
        # Its upsert names the key alone as the conflict target, which no longer exists.
        with pytest.raises(asyncpg.InvalidColumnReferenceError):
            await old.execute(
                f"INSERT INTO {table} AS m (key, value, content, content_hash, memory_type, "
                "scope, scope_id, indices) VALUES ('ana-allergy', '\"x\"', 'x', '\\x00', "
                "'long_term', 'user', 'ana', '{}') ON CONFLICT (key) DO UPDATE SET value = "
                "EXCLUDED.value, scope = EXCLUDED.scope, scope_id = EXCLUDED.scope_id"
            )
    finally:
        await old.close()
    assert [dict(r) for r in await raw_conn.fetch(_snapshot_sql(schema))] == [
        dict(r) for r in before
    ]
    # And release 0.1 itself refuses to start on the upgraded table.
    registry = await raw_conn.fetchval(
        f'SELECT schema_version FROM "{schema}".pepperpy_memory_tables'
    )
    assert registry > 3


async def test_every_unique_index_includes_the_distribution_column(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    # Citus distributes a table by one column and requires it in every unique index: the
    # owner id (scope_id) keeps one owner's memories on one node.
    layout = storage.layout
    for table in (layout.table, layout.passages_name):
        unique = await raw_conn.fetch(
            "SELECT c.relname, array_agg(a.attname) AS columns FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = $1::regclass AND i.indisunique GROUP BY c.relname",
            f"{layout.schema}.{table}",
        )
        assert unique, "the primary key is a unique index"
        for index in unique:
            assert "scope_id" in index["columns"], index["relname"]


async def test_new_memories_after_the_upgrade_get_the_type_defaults(
    pg_dsn: str,
) -> None:
    schema = await _load_release_0_1(pg_dsn)
    config = PostgresConfig(dsn=pg_dsn, schema=schema, table="memories")
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        entry = await store.store(
            "session-note",
            "another session's note",
            type=MemoryType.SHORT_TERM,
            scope=MemoryScope.SESSION,
            scope_id="s-2",
        )
        assert entry.expires_at is not None
        assert (
            await store.retrieve("session-note", scope="session", scope_id="s-1")
        ).expires_at is None


@pytest.mark.parametrize("spoken", ["4", "22", "26"])
async def test_a_process_speaking_an_older_schema_cannot_write(
    storage: PostgresStorage[str, Any], pg_dsn: str, spoken: str
) -> None:
    # A release of schema 4 upserts a memory without replacing its passages (no memory may
    # keep vectors of text it no longer has); one of schema 22 judges a memory expired by
    # its row alone, blind to the refreshes kept beside it (a sweep would delete memories a
    # read kept); one of schema 26 records the versions of its bulk merges itself, and
    # would replace a current version without giving its history row the vector. All are
    # refused.
    await storage.store("doc", "text", passages=["first", "second"])
    layout = storage.layout
    old = await asyncpg.connect(
        pg_dsn,
        server_settings={
            "application_name": "pepperpy-pg-memory",
            "pepperpy.client_schema": spoken,
        },
    )
    try:
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError) as caught:
            await old.execute(
                f"UPDATE {layout.qualified_table} SET value = '\"changed\"' WHERE key = 'doc'"
            )
        assert "current versions recorded without their vector (schema 27)" in str(caught.value)
    finally:
        await old.close()
    assert (await storage.retrieve("doc")).value == "text"
