"""A bulk merge that numbers and records its own versions (schema version 20) leaves exactly
what the row triggers leave: the same rows, versions, terms and history, and the same quota.

Each scenario runs twice against real PostgreSQL, once through the statement and once with
the row triggers doing the work (``Statements.writes_versions`` forced off), and the two
tables are compared; the expected figures are also asserted on their own.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from pepperpy_pg_memory import MemoryQuotaError, MemoryScope, PostgresStorage
from pepperpy_pg_memory.queries import Statements

OWNER = {"scope": MemoryScope.USER, "scope_id": "ana"}


def _items(keys: range, text: str = "note {} about ticket A-{}") -> list[dict[str, Any]]:
    return [{"key": f"k{i:02d}", "value": text.format(i, 77800 + i), **OWNER} for i in keys]


async def _scenario(make_config: Any, table: str) -> None:
    async with PostgresStorage[str, Any](make_config(table=table)) as store:
        await store.store_many(_items(range(40)))
        await store.delete("k01", **OWNER)
        await store.delete("k02", **OWNER)
    async with PostgresStorage[str, Any](make_config(table=table, history=False)) as quiet:
        # Written with history off: its version is not in the history yet.
        await quiet.store("k60", "written while history was off", **OWNER)
    async with PostgresStorage[str, Any](make_config(table=table)) as store:
        await store.store_many(
            [
                *_items(range(10)),  # k00 (and k01, k02: deleted) as they stand
                *_items(range(10, 20), "changed note {} about ticket B-{}"),
                *_items(range(40, 55)),
                {"key": "k60", "value": "written again with history on", **OWNER},
            ],
            actor="importer",
            reason="nightly sync",
        )


async def _state(dsn: str, schema: str, table: str) -> tuple[list[Any], list[Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT key, version, in_history, terms::text AS terms, content "
            f'FROM "{schema}"."{table}" ORDER BY key'
        )
        versions = await conn.fetch(
            f"SELECT key, version, operation, actor, reason, content, "
            f"replaced_at IS NOT NULL AS replaced, "
            f"replaced_at = lead(at) OVER (PARTITION BY key ORDER BY version) AS closed_by_next,"
            f" at >= lag(at) OVER (PARTITION BY key ORDER BY version) AS in_order "
            f'FROM "{schema}"."{table}_history" ORDER BY key, version'
        )
    finally:
        await conn.close()
    return [tuple(row) for row in rows], [tuple(row) for row in versions]


@pytest.fixture
def merged(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each bulk merge, whether it recorded its own versions."""
    kinds: list[bool] = []
    merge_staging = Statements.merge_staging

    def spy(self: Statements, *args: Any, **kwargs: Any) -> Any:
        kinds.append(kwargs.get("versions", False))
        return merge_staging(self, *args, **kwargs)

    monkeypatch.setattr(Statements, "merge_staging", spy)
    return kinds


async def test_a_bulk_merge_records_what_the_row_triggers_record(
    make_config: Any,
    pg_dsn: str,
    test_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    merged: list[bool],
) -> None:
    await _scenario(make_config, "statement_versions")
    assert merged == [True, True]
    with monkeypatch.context() as triggers:
        triggers.setattr(Statements, "writes_versions", property(lambda self: False))
        await _scenario(make_config, "row_versions")
    assert merged[2:] == [False, False]

    by_statement = await _state(pg_dsn, test_schema, "statement_versions")
    by_triggers = await _state(pg_dsn, test_schema, "row_versions")
    assert by_statement == by_triggers

    rows, versions = by_statement
    current = {row[0]: row for row in rows}
    assert current["k00"][1] == 1  # stored as it stood: no new version
    assert current["k01"][1] == 3  # created, deleted, created again
    assert current["k10"][1] == 2 and "b-77810" in current["k10"][3]
    assert current["k45"][1] == 1 and "'a-77845'" in current["k45"][3]
    assert all(row[2] for row in rows)  # every current version is in the history
    history = {(v[0], v[1]): v for v in versions}
    assert history[("k01", 2)][2] == "delete"
    assert history[("k01", 3)][2:5] == ("create", "importer", "nightly sync")
    assert history[("k10", 2)][2:5] == ("update", "importer", "nightly sync")
    assert history[("k10", 1)][6] is True and history[("k10", 1)][7] is True
    assert ("k00", 2) not in history
    # The version written with history off was recorded when it was replaced.
    assert history[("k60", 1)][2] == "create" and history[("k60", 1)][6] is True
    assert history[("k60", 2)][5] == "written again with history on"
    assert all(v[8] is not False for v in versions)  # moments follow the version order


async def test_a_bulk_merge_keeps_the_quota_and_leaves_eviction_to_the_trigger(
    make_config: Any, pg_dsn: str, test_schema: str, merged: list[bool]
) -> None:
    config = make_config(table="quota_merge", max_memories_per_owner=45)
    async with PostgresStorage[str, Any](config) as store:
        await store.store_many(_items(range(40)), type="short_term")
        # Room for all five new ones (and the 35 rewritten take none): no eviction.
        changed = _items(range(5, 45), "changed {} B-{}")
        assert await store.store_many(changed, type="short_term") == 40
        assert await store.count(**OWNER) == 45
        history = await store.history("k00", **OWNER)
        assert [v.operation for v in history] == ["create"]
        # Full: the next new memories evict the lowest-ranked ones, recorded as evictions.
        await store.store_many(_items(range(45, 80)), type="short_term")
        assert await store.count(**OWNER) == 45
        conn = await asyncpg.connect(pg_dsn)
        try:
            evicted = await _evictions(conn, test_schema, "quota_merge")
        finally:
            await conn.close()
        assert evicted == 35
        assert merged == [True, True, False]
    long_term_only = make_config(table="quota_merge_full", max_memories_per_owner=40)
    async with PostgresStorage[str, Any](long_term_only) as store:
        await store.store_many(_items(range(40)))  # long-term: never evicted
        with pytest.raises(MemoryQuotaError):
            await store.store_many(_items(range(40, 75)))
        assert await store.count(**OWNER) == 40
    assert merged[3:] == [True, False]  # no room: the trigger found nothing to evict


async def test_expired_memories_take_no_room_from_a_bulk_merge(
    make_config: Any, pg_dsn: str, test_schema: str, merged: list[bool]
) -> None:
    # The room is first counted from every row of the owner (the primary key alone); rows
    # past their expiry, not yet swept, fill that count but not the quota, which the live
    # count then finds: the batch is merged whole, and nothing is evicted.
    config = make_config(table="quota_expired", max_memories_per_owner=60)
    async with PostgresStorage[str, Any](config) as store:
        await store.store_many(_items(range(40)), type="short_term")
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(
                f'UPDATE "{test_schema}".quota_expired SET expires_at = now() - interval '
                "'1 minute' WHERE key < 'k20'"
            )
            assert await store.count(**OWNER) == 20
            assert await store.store_many(_items(range(40, 75)), type="short_term") == 35
            assert await store.count(**OWNER) == 55
            assert await _evictions(conn, test_schema, "quota_expired") == 0
            assert merged == [True, True]
            # Past the quota, the live count decides: the trigger makes room, row by row.
            await store.store_many(_items(range(75, 110)), type="short_term")
            assert await store.count(**OWNER) == 60
            assert merged[2:] == [False]
            live = await conn.fetchval(
                f'SELECT count(*) FROM "{test_schema}".quota_expired '
                "WHERE expires_at IS NULL OR expires_at > now()"
            )
            assert live == 60
        finally:
            await conn.close()


async def _evictions(conn: asyncpg.Connection, schema: str, table: str) -> int:
    """How many versions of ``table`` the quota evicted, as its history records them."""
    count: int = await conn.fetchval(
        f'SELECT count(*) FROM "{schema}"."{table}_history" WHERE operation = \'evict\''
    )
    return count
