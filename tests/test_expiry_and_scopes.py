"""Expiry is enforced on every read at once; scopes never leak into each other."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from pepperpy_pg_memory import (
    MemoryIndex,
    MemoryNotFoundError,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
)


async def _expire_now(conn: asyncpg.Connection, config: PostgresConfig, key: str) -> None:
    # Move the deadline into the past behind the store's back, as the passing of time would.
    await conn.execute(
        f'UPDATE "{config.schema_name}"."{config.table}" '
        "SET expires_at = now() - interval '1 second' WHERE key = $1",
        key,
    )


async def test_expired_entries_vanish_from_every_read_before_cleanup(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    await storage.store("gone", "shared phrase about lanterns", type=MemoryType.SHORT_TERM)
    await storage.store("kept", "shared phrase about lanterns too", type=MemoryType.LONG_TERM)
    await _expire_now(raw_conn, storage.config, "gone")

    with pytest.raises(MemoryNotFoundError):
        await storage.retrieve("gone")
    assert not await storage.exists("gone")
    assert await storage.count() == 1
    assert [e.key for e in await storage.list()] == ["kept"]
    for index in MemoryIndex:
        results = await storage.search(
            MemoryQuery(query="lanterns shared phrase", index_type=index)
        )
        assert "gone" not in [r.entry.key for r in results], index
    assert "gone" not in [r.entry.key for r in await storage.similar("kept")]
    with pytest.raises(MemoryNotFoundError):
        await storage.similar("gone")

    stats = await storage.stats()
    assert stats["expired_not_cleaned"] == 1
    assert await storage.cleanup_expired() == 1
    assert await storage.cleanup_expired() == 0
    assert (await storage.stats())["expired_not_cleaned"] == 0


async def test_ttl_defaults_follow_the_memory_type(storage: PostgresStorage[str, Any]) -> None:
    ttls = storage.config.type_ttls
    for memory_type in MemoryType:
        entry = await storage.store(f"k-{memory_type.value}", "x", type=memory_type)
        ttl = ttls[memory_type]
        if ttl is None:
            assert entry.expires_at is None, memory_type
        else:
            assert entry.expires_at is not None
            assert entry.expires_at - entry.updated_at == ttl, memory_type
    assert ttls[MemoryType.SHORT_TERM] is not None and ttls[MemoryType.WORKING] is not None
    assert ttls[MemoryType.LONG_TERM] is None


async def test_explicit_ttl_never_and_expires_at(storage: PostgresStorage[str, Any]) -> None:
    never = await storage.store("a", "x", type=MemoryType.SHORT_TERM, ttl="never")
    assert never.expires_at is None
    seconds = await storage.store("b", "x", ttl=90)
    assert seconds.expires_at is not None
    assert seconds.expires_at - seconds.updated_at == timedelta(seconds=90)
    moment = datetime.now(timezone.utc) + timedelta(days=3)
    fixed = await storage.store("c", "x", expires_at=moment)
    assert fixed.expires_at == moment


async def test_short_ttl_really_expires(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    entry = await storage.store("brief", "x", ttl=1.0)
    assert entry.expires_at is not None
    assert entry.expires_at - entry.updated_at == timedelta(seconds=1)
    assert await storage.exists("brief")
    # Two seconds pass for this memory (its clock moved back, not the test's asleep).
    await raw_conn.execute(
        f'UPDATE "{storage.config.schema_name}"."{storage.config.table}" SET '
        "expires_at = expires_at - interval '2 seconds', "
        "updated_at = updated_at - interval '2 seconds' WHERE key = 'brief'"
    )
    assert not await storage.exists("brief")
    assert await storage.cleanup_expired() == 1


async def test_storing_an_expired_key_again_starts_a_new_memory(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    first = await storage.store("k", "old")
    await _expire_now(raw_conn, storage.config, "k")
    second = await storage.store("k", "new")
    assert second.created_at > first.created_at


async def test_cleanup_runs_in_bounded_batches(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    await storage.store_many(((f"k{i}", "x") for i in range(25)), ttl=3600)
    await raw_conn.execute(
        f'UPDATE "{storage.config.schema_name}"."{storage.config.table}" '
        "SET expires_at = now() - interval '1 second'"
    )
    assert await storage.cleanup_expired(batch_size=4) == 25
    assert await storage.count() == 0


@pytest.fixture
async def two_sessions(storage: PostgresStorage[str, Any]) -> PostgresStorage[str, Any]:
    for session in ("s1", "s2"):
        await storage.store(
            f"{session}-secret",
            f"the password hint of {session} is a blue lantern",
            type=MemoryType.SHORT_TERM,
            scope=MemoryScope.SESSION,
            scope_id=session,
        )
    await storage.store("public", "blue lanterns are pretty", scope=MemoryScope.GLOBAL)
    return storage


async def test_search_restricted_to_a_session_sees_only_that_session(
    two_sessions: PostgresStorage[str, Any],
) -> None:
    for index in MemoryIndex:
        results = await two_sessions.search(
            MemoryQuery(
                query="password hint blue lantern",
                index_type=index,
                scope=MemoryScope.SESSION,
                scope_id="s1",
                limit=50,
            )
        )
        assert {r.entry.key for r in results} == {"s1-secret"}, index


async def test_retrieve_delete_similar_respect_the_owner(
    two_sessions: PostgresStorage[str, Any],
) -> None:
    store = two_sessions
    session = MemoryScope.SESSION
    with pytest.raises(MemoryNotFoundError):
        await store.retrieve("s2-secret", scope=session, scope_id="s1")
    assert (await store.retrieve("s1-secret", scope=session, scope_id="s1")).scope_id == "s1"
    # similar() on someone else's key is "not found", not a leak of their neighbours
    with pytest.raises(MemoryNotFoundError):
        await store.similar("s2-secret", scope=session, scope_id="s1")
    neighbours = await store.similar("s1-secret", scope=session, scope_id="s1", limit=10)
    assert neighbours == []  # s1 has nothing else
    assert await store.delete("s2-secret", scope=session, scope_id="s1") is False
    assert await store.exists("s2-secret")
    assert await store.delete_many(scope=session, scope_id="s1") == 1
    assert await store.exists("s2-secret") and await store.exists("public")
    assert await store.count(scope=MemoryScope.GLOBAL) == 1


async def test_scope_without_id_uses_the_configured_default(make_config: Any) -> None:
    from pepperpy_pg_memory import HashingEmbedder

    config = make_config(default_scope_id="agent-007")
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        entry = await store.store("k", "x", scope=MemoryScope.AGENT)
        assert entry.scope_id == "agent-007"
        assert await store.count(scope=MemoryScope.AGENT) == 1
        assert await store.count(scope=MemoryScope.AGENT, scope_id="other") == 0


async def test_a_refresh_leaves_a_memory_refreshed_a_moment_ago(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    # A refresh writes a row: a memory whose expiry is already within ttl_refresh_slack (1%)
    # of the new one is left as it is.
    assert storage.config.ttl_refresh_slack == 0.01
    table = f'"{storage.config.schema_name}"."{storage.config.table}"'

    async def expiry(key: str) -> datetime | None:
        return (await storage.retrieve(key)).expires_at

    await storage.store("fresh", "read over and over", ttl=timedelta(hours=1))
    await storage.store("aging", "read now and then", ttl=timedelta(hours=1))
    await storage.store("forever", "never expires", ttl=None)
    written = await expiry("fresh")
    # Its expiry is already within 36 s of now + 1 h: left, and not counted.
    assert await storage.touch(["fresh"], timedelta(hours=1)) == 0
    assert await expiry("fresh") == written
    # A memory an hour from its end, or a longer TTL, is extended; so is one that never
    # expired (touch gives it a TTL, as before).
    await raw_conn.execute(
        f"UPDATE {table} SET expires_at = now() + interval '59 minutes' WHERE key = 'aging'"
    )
    assert await storage.touch(["aging", "forever"], timedelta(hours=1)) == 2
    assert await expiry("aging") > now_plus(timedelta(minutes=59, seconds=30))
    assert await expiry("forever") is not None
    assert await storage.touch(["fresh"], timedelta(hours=2)) == 1
    assert await expiry("fresh") > written + timedelta(minutes=59)


def now_plus(delta: timedelta) -> datetime:
    return datetime.now(timezone.utc) + delta


ON_ONE_SERVER = (
    "TTL refreshes are kept beside the memories on one server; on a Citus cluster a refresh "
    "rewrites the memory's row (test_touch_extends_live_memories_only covers it there)"
)


async def _time_passes(conn: asyncpg.Connection, config: PostgresConfig, delta: timedelta) -> None:
    """Move every expiry ``delta`` back behind the store's back, memories' and refreshes'
    alike, as the passing of time would (a refresh still names its memory's expiry)."""
    table = f'"{config.schema_name}"."{config.table}"'
    async with conn.transaction():
        await conn.execute(
            f"UPDATE {table} SET expires_at = expires_at - $1::interval "
            "WHERE expires_at IS NOT NULL",
            delta,
        )
        await conn.execute(
            f'UPDATE "{config.schema_name}"."{config.table}_refreshes" '
            "SET refreshed_from = refreshed_from - $1::interval, "
            "expires_at = expires_at - $1::interval",
            delta,
        )


async def test_a_refreshed_memory_outlives_its_own_expiry_everywhere(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    if storage.layout.distributed:
        pytest.skip(ON_ONE_SERVER)
    ana: dict[str, Any] = {"scope": MemoryScope.USER, "scope_id": "ana"}
    await storage.store("kept", "shared phrase about lanterns", ttl=3600, **ana)
    await storage.store("dropped", "shared phrase about lanterns too", ttl=3600, **ana)
    # Another owner, with no refresh at all (a read of hers asks no refresh function).
    bruno: dict[str, Any] = {"scope": MemoryScope.USER, "scope_id": "bruno"}
    await storage.store("bruno-gone", "shared phrase about lanterns", ttl=3600, **bruno)
    assert await storage.touch(["kept"], timedelta(hours=2), **ana) == 1
    # 90 minutes on: both rows' own expiry has passed; the refresh of "kept" has not.
    await _time_passes(raw_conn, storage.config, timedelta(minutes=90))
    assert not await storage.exists("bruno-gone", **bruno)
    assert await storage.list(**bruno) == []
    assert [e.key for e in await storage.list()] == ["kept"]  # every owner of the tenant

    entry = await storage.retrieve("kept", **ana)
    assert entry.expires_at is not None
    assert now_plus(timedelta(minutes=29)) < entry.expires_at < now_plus(timedelta(minutes=31))
    assert await storage.exists("kept", **ana)
    assert not await storage.exists("dropped", **ana)
    assert await storage.count(**ana) == 1
    assert [e.key for e in await storage.list(**ana)] == ["kept"]
    for index in MemoryIndex:
        query = MemoryQuery(query="lanterns shared phrase", index_type=index, **ana)
        assert [r.entry.key for r in await storage.search(query)] == ["kept"], index
    for index in MemoryIndex:
        query = MemoryQuery(query="lanterns shared phrase", index_type=index)
        assert [r.entry.key for r in await storage.search(query)] == ["kept"], index
    assert (await storage.stats())["expired_not_cleaned"] == 2
    assert await storage.cleanup_expired() == 2
    assert await storage.exists("kept", **ana)
    # Read again within its refreshed time, it is refreshed again from there.
    assert await storage.touch(["kept"], timedelta(hours=2), **ana) == 1
    assert (await storage.retrieve("kept", **ana)).expires_at > now_plus(timedelta(minutes=119))


async def test_a_write_after_a_refresh_sets_its_own_expiry(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    await storage.store("note", "tea at five", ttl=3600)
    assert await storage.touch(["note"], timedelta(hours=5)) == 1
    await storage.store("note", "tea at six", ttl=60)
    expiry = (await storage.retrieve("note")).expires_at
    assert expiry is not None and expiry < now_plus(timedelta(minutes=2))
    assert await storage.touch(["note"], timedelta(hours=5)) == 1
    await storage.store("note", "tea at seven", ttl=None)
    assert (await storage.retrieve("note")).expires_at is None


async def test_a_refreshed_memory_written_after_its_own_expiry_is_the_same_memory(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    if storage.layout.distributed:
        pytest.skip(ON_ONE_SERVER)
    # Kept alive by a read past its own expiry, a memory written again is updated (its
    # creation and history go on), not started anew as an expired one would be.
    first = await storage.store("note", "tea at five", ttl=3600)
    assert await storage.touch(["note"], timedelta(hours=2)) == 1
    await _time_passes(raw_conn, storage.config, timedelta(minutes=90))
    again = await storage.store("note", "tea at six", ttl=3600)
    assert again.version == first.version + 1
    assert again.created_at == first.created_at
    versions = await storage.history("note")
    assert sorted(v.version for v in versions) == [1, 2]


async def test_a_refresh_does_not_outlive_its_memory(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    if storage.layout.distributed:
        pytest.skip(ON_ONE_SERVER)
    # A memory deleted and stored again is a new one: the old one's refresh keeps nothing.
    await storage.store("note", "tea at five", ttl=3600)
    assert await storage.touch(["note"], timedelta(hours=2)) == 1
    await storage.delete("note")
    await storage.store("note", "tea at six", ttl=3600)
    await _time_passes(raw_conn, storage.config, timedelta(minutes=90))
    assert not await storage.exists("note")
    refreshes = f'"{storage.config.schema_name}"."{storage.config.table}_refreshes"'
    assert await raw_conn.fetchval(f"SELECT count(*) FROM {refreshes}") == 1
    assert await storage.cleanup_expired() == 1
    # The sweep takes the refreshes that keep nothing live with it.
    assert await raw_conn.fetchval(f"SELECT count(*) FROM {refreshes}") == 0


async def test_touch_extends_live_memories_only(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    await storage.store("a", "x", ttl=60)
    await storage.store("b", "x", ttl=60)
    await _expire_now(raw_conn, storage.config, "b")
    assert await storage.touch(["a", "b", "missing"], timedelta(days=2)) == 1
    entry = await storage.retrieve("a")
    assert entry.expires_at is not None
    assert entry.expires_at - entry.updated_at > timedelta(days=1)
    assert not await storage.exists("b")


async def test_touch_by_owner_extends_what_it_names_of_several_owners_at_once(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    # Two owners hold "note"; a third holds "plan" and "gone" (expired). Naming ana's note
    # and carl's two memories extends ana's note and carl's plan: not bruno's note, nor
    # carl's expired memory, nor a name nobody holds.
    for owner in ("ana", "bruno"):
        await storage.store("note", f"{owner}'s note", scope="user", scope_id=owner, ttl=60)
    await storage.store("plan", "carl's plan", scope="user", scope_id="carl", ttl=60)
    await storage.store("gone", "carl's old plan", scope="user", scope_id="carl", ttl=60)
    await _expire_now(raw_conn, storage.config, "gone")
    names = [
        (MemoryScope.USER, "ana", "note"),
        ("user", "carl", "plan"),
        ("user", "carl", "gone"),
        ("user", "dora", "note"),
    ]
    assert await storage.touch_by_owner(names, timedelta(days=2)) == 2

    async def lasts(owner: str, key: str) -> timedelta:
        entry = await storage.retrieve(key, scope="user", scope_id=owner)
        assert entry.expires_at is not None
        return entry.expires_at - datetime.now(timezone.utc)

    assert await lasts("ana", "note") > timedelta(days=1)
    assert await lasts("carl", "plan") > timedelta(days=1)
    assert await lasts("bruno", "note") < timedelta(minutes=2)
    assert not await storage.exists("gone", scope="user", scope_id="carl")
    # Extended a moment ago: within the refresh slack, left and not counted.
    assert await storage.touch_by_owner(names, timedelta(days=2)) == 0
    assert await storage.touch_by_owner([], timedelta(days=2)) == 0


async def test_touch_by_owner_checks_every_name_before_it_extends_any(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("note", "ana's note", scope="user", scope_id="ana", ttl=60)
    with pytest.raises(MemoryValidationError):
        await storage.touch_by_owner(
            [("user", "ana", "note"), ("user", "ana", "x" * 10_000)], timedelta(days=2)
        )
    entry = await storage.retrieve("note", scope="user", scope_id="ana")
    assert entry.expires_at is not None
    assert entry.expires_at - datetime.now(timezone.utc) < timedelta(minutes=2)


async def test_values_by_owner_refreshes_what_it_reads_when_asked(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    # Read with touch=1 h for memories whose metadata says {"ttl": 60}: ana's aging "a" is
    # extended and read with its new expiry; "b" (another TTL) and bruno's "a" (not read)
    # keep theirs; "c", which never expired, gets one, as touch gives it; "gone" has expired
    # and is neither read nor revived.
    table = f'"{storage.config.schema_name}"."{storage.config.table}"'
    for owner in ("ana", "bruno"):
        mine = {"scope": "user", "scope_id": owner}
        await storage.store("a", "tea", ttl=3600, metadata={"ttl": 60.0}, **mine)
        await storage.store("b", "coffee", ttl=3600, metadata={"ttl": 30}, **mine)
        await storage.store("c", "water", ttl=None, metadata={"ttl": 60}, **mine)
        await storage.store("gone", "juice", ttl=3600, metadata={"ttl": 60}, **mine)
    await raw_conn.execute(
        f"UPDATE {table} SET expires_at = now() + interval '30 minutes' "
        "WHERE expires_at IS NOT NULL"
    )
    await _expire_now(raw_conn, storage.config, "gone")
    names = [("user", "ana", key) for key in ("a", "b", "c", "gone")]
    found = await storage.values_by_owner(
        names, touch=timedelta(hours=1), touch_metadata={"ttl": 60}
    )
    assert sorted(identity.key for identity in found) == ["a", "b", "c"]

    def left(expires_at: datetime | None) -> timedelta:
        assert expires_at is not None
        return expires_at - datetime.now(timezone.utc)

    ana = {name.key: value for name, value in found.items()}
    assert left(ana["a"].expires_at) > timedelta(minutes=59)
    assert left(ana["b"].expires_at) < timedelta(minutes=31)
    assert left(ana["c"].expires_at) > timedelta(minutes=59)
    # What was read is what is stored.
    for key in ("a", "b", "c"):
        entry = await storage.retrieve(key, scope="user", scope_id="ana")
        assert entry.expires_at == ana[key].expires_at
    assert left((await storage.retrieve("a", scope="user", scope_id="bruno")).expires_at) < (
        timedelta(minutes=31)
    )
    assert not await storage.exists("gone", scope="user", scope_id="ana")
    # Read again at once: within the refresh slack, nothing moves.
    again = await storage.values_by_owner(
        names, touch=timedelta(hours=1), touch_metadata={"ttl": 60}
    )
    assert {i.key: v.expires_at for i, v in again.items()} == {
        i.key: v.expires_at for i, v in found.items()
    }
    # Without a filter every memory read is refreshed.
    everything = await storage.values_by_owner(names, touch=timedelta(hours=2))
    assert all(left(value.expires_at) > timedelta(minutes=119) for value in everything.values())
