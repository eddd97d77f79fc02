"""A memory is named by its owner and its key: one owner's calls never touch another's memory."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pepperpy_pg_memory import (
    AmbiguousKeyError,
    HashingEmbedder,
    MemoryIndex,
    MemoryNotFoundError,
    MemoryQuery,
    MemoryScope,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
    StoredValue,
)
from pepperpy_pg_memory.schema import MAX_KEY_BYTES, MAX_SCOPE_ID_BYTES, MAX_TENANT_BYTES
from pepperpy_pg_memory.types import Identity

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}
BRUNO = {"scope": MemoryScope.USER, "scope_id": "bruno"}


async def _rows(conn: asyncpg.Connection, config: PostgresConfig) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT tenant, scope, scope_id, key, value #>> '{{}}' AS value "
        f'FROM "{config.schema_name}"."{config.table}" ORDER BY scope, scope_id, key'
    )


async def test_two_users_keep_their_own_memory_under_one_key(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("preferences", {"content": "dark"}, **ANA)
    await storage.store("preferences", {"content": "light"}, **BRUNO)
    assert (await storage.retrieve("preferences", **ANA)).value == {"content": "dark"}
    assert (await storage.retrieve("preferences", **BRUNO)).value == {"content": "light"}
    assert await storage.count(**ANA) == 1 and await storage.count(**BRUNO) == 1
    # A write by Ana changes Ana's memory only.
    await storage.store("preferences", {"content": "solarized"}, **ANA)
    assert (await storage.retrieve("preferences", **BRUNO)).value == {"content": "light"}


async def test_a_key_without_scope_names_its_one_holder_or_is_ambiguous(
    storage: PostgresStorage[str, Any],
) -> None:
    # The design document's examples name keys without an owner: they keep working.
    await storage.store("user_preference", "tea")
    assert (await storage.retrieve("user_preference")).value == "tea"
    assert await storage.exists("user_preference")
    with pytest.raises(MemoryNotFoundError):
        await storage.retrieve("nobody-has-this")

    for owner in (ANA, BRUNO, {"scope": MemoryScope.AGENT, "scope_id": "bot"}):
        await storage.store("shared", f"held by {owner['scope_id']}", **owner)
    for call in (
        storage.retrieve("shared"),
        storage.exists("shared"),
        storage.retrieve_many(["shared", "user_preference"]),
        storage.delete("shared"),
        storage.touch(["shared"], 60),
        storage.delete_many(keys=["shared"]),
        storage.similar("shared"),
    ):
        with pytest.raises(AmbiguousKeyError) as caught:
            await call
        assert caught.value.owners == 3 and caught.value.key == "shared"
        assert "3 owners" in str(caught.value) and "scope=" in str(caught.value)
    # Nothing was deleted or extended by the refused calls.
    assert await storage.count() == 4
    assert all(entry.expires_at is None for entry in await storage.list())
    assert (await storage.retrieve("shared", **BRUNO)).value == "held by bruno"


async def test_delete_many_by_keys_resolves_within_its_other_criteria(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("note", "ana's", metadata={"kind": "draft"}, **ANA)
    await storage.store("note", "bruno's", metadata={"kind": "final"}, **BRUNO)
    with pytest.raises(AmbiguousKeyError):
        await storage.delete_many(keys=["note"], types="long_term")
    # The filter leaves one holder: that one is deleted, the other stays.
    assert await storage.delete_many(keys=["note"], filter={"kind": "draft"}) == 1
    assert (await storage.retrieve("note")).scope_id == "bruno"


async def test_calls_with_an_owner_act_on_that_owner_only(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("k", "ana's words about coffee", **ANA)
    await storage.store("k", "bruno's words about coffee", **BRUNO)
    await storage.store("other", "ana's other words about coffee", **ANA)

    assert await storage.touch(["k"], timedelta(hours=1), **ANA) == 1
    assert (await storage.retrieve("k", **ANA)).expires_at is not None
    assert (await storage.retrieve("k", **BRUNO)).expires_at is None

    similar = await storage.similar("k", limit=5, **ANA)
    assert [(r.entry.key, r.entry.scope_id) for r in similar] == [("other", "ana")]
    # Bruno's results are Bruno's: his "k" has no neighbour of his own.
    assert await storage.similar("k", **BRUNO) == []
    assert await storage.retrieve_many(["k"], **BRUNO) == {
        "k": await storage.retrieve("k", **BRUNO)
    }

    assert await storage.delete("k", **ANA) is True
    assert await storage.delete("k", **ANA) is False
    assert (await storage.retrieve("k")).scope_id == "bruno"  # now unambiguous
    assert await storage.delete_many(keys=["k"], **ANA) == 0
    assert await storage.delete("k") is True
    assert [e.key for e in await storage.list()] == ["other"]


async def test_similar_without_scope_searches_every_owner_but_excludes_only_itself(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("a", "the cat sleeps on the warm sofa", **ANA)
    await storage.store("a", "the cat sleeps on the warm sofa", **BRUNO)
    await storage.store("b", "a dog barks in the garden", **ANA)
    hits = await storage.similar("b")
    # Both owners' "a" are neighbours: the probe's exclusion is by identity, not by key.
    assert sorted((r.entry.key, r.entry.scope_id) for r in hits) == [("a", "ana"), ("a", "bruno")]


async def test_searches_join_their_branches_by_owner_and_key(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("note", "Ana's flight to Lisbon leaves on Monday", **ANA)
    await storage.store("note", "Bruno's invoice was paid in March", **BRUNO)
    for index in (MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID):
        hits = await storage.search(MemoryQuery(query="flight Lisbon", index_type=index, limit=5))
        # Each hit carries its own row: Ana's text with Ana's score, never Bruno's row
        # joined to Ana's full-text score through the shared key.
        for hit in hits:
            expected = "Ana's" if hit.entry.scope_id == "ana" else "Bruno's"
            assert hit.entry.text.startswith(expected)
        assert hits[0].entry.scope_id == "ana"
        assert len({(h.entry.scope_id, h.entry.key) for h in hits}) == len(hits)
        if index is MemoryIndex.HYBRID:
            bruno = [h for h in hits if h.entry.scope_id == "bruno"]
            assert all(h.contextual_score is None for h in bruno)


async def test_cleanup_expired_spares_another_owners_live_memory_under_the_same_key(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    await storage.store("token", "ana's session token", ttl=60, **ANA)
    await storage.store("token", "bruno's session token", **BRUNO)
    await raw_conn.execute(  # Ana's minute passes
        f'UPDATE "{storage.config.schema_name}"."{storage.config.table}" '
        "SET expires_at = now() - interval '1 second' WHERE scope_id = 'ana'"
    )
    assert await storage.cleanup_expired() == 1
    rows = await _rows(raw_conn, storage.config)
    assert [(r["scope_id"], r["key"]) for r in rows] == [("bruno", "token")]


async def test_store_many_writes_one_memory_per_owner_and_key(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    written = await storage.store_many(
        [
            {"key": "k", "value": "ana 1", **ANA},
            {"key": "k", "value": "bruno", **BRUNO},
            {"key": "k", "value": "ana 2", **ANA},  # the last of Ana's wins
            {"key": "k", "value": "global"},
        ]
    )
    assert written == 3
    rows = await _rows(raw_conn, storage.config)
    assert [(r["scope"], r["scope_id"], r["value"]) for r in rows] == [
        ("global", "", "global"),
        ("user", "ana", "ana 2"),
        ("user", "bruno", "bruno"),
    ]


async def test_concurrent_upserts_of_one_key_by_two_owners(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    async def write(owner: dict[str, Any], n: int) -> tuple[str, Any]:
        value = f"{owner['scope_id']} {n}"
        entry = await storage.store("profile", value, **owner)
        return value, entry.updated_at

    results = await asyncio.gather(*(write(owner, n) for n in range(40) for owner in (ANA, BRUNO)))
    rows = await _rows(raw_conn, storage.config)
    assert len(rows) == 2
    for row in rows:
        mine = [(at, value) for value, at in results if value.startswith(row["scope_id"])]
        # The row holds the value of the write that committed last (latest updated_at).
        assert row["value"] == max(mine)[1]

    batches = await asyncio.gather(
        *(
            storage.store_many([{"key": "batch", "value": f"{o['scope_id']} {n}", **o}])
            for n in range(20)
            for o in (ANA, BRUNO)
        )
    )
    assert batches == [1] * 40
    assert await storage.count(key_prefix="batch") == 2


async def test_bad_owner_input_is_refused_and_nothing_is_written(
    storage: PostgresStorage[str, Any],
) -> None:
    cases = [
        ({"scope": MemoryScope.GLOBAL, "scope_id": "ana"}, "k", "GLOBAL memories have no scope_id"),
        ({"scope": MemoryScope.USER, "scope_id": "x" * 257}, "k", "257 bytes"),
        ({"scope": MemoryScope.USER, "scope_id": "ü" * 129}, "k", "258 bytes"),
        ({"scope": MemoryScope.USER, "scope_id": ""}, "k", "non-empty"),
        ({"scope": MemoryScope.USER, "scope_id": "a\x00b"}, "k", "NUL"),
        (ANA, "k" * (MAX_KEY_BYTES + 1), "2,049 bytes"),
        (ANA, "日" * 683, "2,049 bytes"),
    ]
    for owner, key, message in cases:
        with pytest.raises(MemoryValidationError, match=message):
            await storage.store(key, "value", **owner)
        with pytest.raises(MemoryValidationError, match=message):
            await storage.store_many(
                [{"key": "fine", "value": 1}, {"key": key, "value": 2, **owner}]
            )
    with pytest.raises(MemoryValidationError, match="scope_id needs a scope"):
        await storage.delete("k", scope_id="ana")
    assert await storage.count() == 0


async def test_the_longest_identity_fits_the_primary_key(make_config: Any) -> None:
    tenant = "t" * MAX_TENANT_BYTES
    config = make_config(tenant=tenant)
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        # Random-looking text does not compress: the index entry holds every byte.
        key = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(MAX_KEY_BYTES // 3))
        key += "k" * (MAX_KEY_BYTES - len(key.encode()))
        owner = "".join(chr(0x4E00 + (i * 104729) % 20000) for i in range(85)) + "x"
        assert len(key.encode()) == MAX_KEY_BYTES
        assert len(owner.encode()) == MAX_SCOPE_ID_BYTES
        await store.store(key, "the longest name", scope=MemoryScope.SESSION, scope_id=owner)
        entry = await store.retrieve(key, scope=MemoryScope.SESSION, scope_id=owner)
        assert entry.value == "the longest name"
    with pytest.raises(Exception, match="129 bytes|longer than 128 bytes"):
        make_config(tenant="t" * (MAX_TENANT_BYTES + 1))


async def test_tenants_without_row_level_security_are_still_apart(
    make_config: Any,
) -> None:
    shared = make_config()
    acme = shared.model_copy(update={"tenant": "acme"})
    globex = shared.model_copy(update={"tenant": "globex"})
    async with (
        PostgresStorage[str, Any](acme, HashingEmbedder(16)) as acme_store,
        PostgresStorage[str, Any](globex, HashingEmbedder(16)) as globex_store,
    ):
        await acme_store.store("plan", "acme launches in May")
        await globex_store.store("plan", "globex launches in June")
        assert (await acme_store.retrieve("plan")).value == "acme launches in May"
        hits = await globex_store.search(MemoryQuery(query="launches", limit=10))
        assert [h.entry.text for h in hits] == ["globex launches in June"]
        assert await globex_store.delete("plan") is True
        assert await acme_store.exists("plan")
        await globex_store.store("plan", "globex again")
        assert await globex_store.clear() == 1
        assert await acme_store.count() == 1


async def test_retrieve_by_owner_returns_exactly_the_named_memories(make_config: Any) -> None:
    shared = make_config()
    other_tenant = shared.model_copy(update={"tenant": "globex"})
    async with (
        PostgresStorage[str, Any](shared, HashingEmbedder(16)) as storage,
        PostgresStorage[str, Any](other_tenant, HashingEmbedder(16)) as globex,
    ):
        await storage.store("plan", "ana's plan", **ANA)
        await storage.store("plan", "bruno's plan", **BRUNO)
        await storage.store("plan", "everyone's plan")
        await storage.store("gone", "expired", **ANA, ttl=timedelta(microseconds=1))
        await globex.store("plan", "globex's plan", **ANA)
        found = await storage.retrieve_by_owner(
            [
                ("user", "ana", "plan"),
                (MemoryScope.GLOBAL, None, "plan"),
                ("user", "ana", "gone"),
                ("user", "carla", "plan"),
            ]
        )
        assert {identity: entry.value for identity, entry in found.items()} == {
            Identity("user", "ana", "plan"): "ana's plan",
            Identity("global", "", "plan"): "everyone's plan",
        }
        assert await storage.retrieve_by_owner([]) == {}
        with pytest.raises(MemoryValidationError):
            await storage.retrieve_by_owner([("user", "", "plan")])


async def test_values_by_owner_reads_what_retrieve_by_owner_reads(make_config: Any) -> None:
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(16)) as storage:
        await storage.store("plan", {"text": "ana's plan"}, **ANA, metadata={"lg": 1})
        await storage.store("plan", "bruno's plan", **BRUNO)
        await storage.store("plan", "everyone's plan")
        await storage.store("gone", "expired", **ANA, ttl=timedelta(microseconds=1))
        names = [
            Identity("user", "ana", "plan"),
            (MemoryScope.GLOBAL, None, "plan"),
            ("user", "ana", "gone"),
            ("user", "carla", "plan"),
            ("user", "ana", "plan"),  # named twice: found once
        ]
        entries = await storage.retrieve_by_owner(names)
        values = await storage.values_by_owner(names)
        assert (
            set(values)
            == set(entries)
            == {
                Identity("user", "ana", "plan"),
                Identity("global", "", "plan"),
            }
        )
        for identity, stored in values.items():
            entry = entries[identity]
            assert stored == StoredValue(
                entry.value, entry.metadata, entry.created_at, entry.updated_at, entry.expires_at
            )
        assert values[Identity("user", "ana", "plan")].metadata == {"lg": 1}
        assert await storage.values_by_owner([]) == {}
        with pytest.raises(MemoryValidationError):
            await storage.values_by_owner([("user", "", "plan")])


async def test_reindex_and_scan_walk_every_owner_of_a_key(
    make_config: Any,
) -> None:
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        owners = [{"scope": MemoryScope.USER, "scope_id": f"u{n:02d}"} for n in range(12)]
        await store.store_many(
            {"key": key, "value": f"{key} of {o['scope_id']}", **o}
            for o in owners
            for key in ("a", "b", "c")
        )
        scanned = [(e.scope_id, e.key) async for e in store.scan(page_size=5)]
        assert scanned == sorted((o["scope_id"], k) for o in owners for k in ("a", "b", "c"))
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        assert await store.reindex(MemoryIndex.SEMANTIC, batch_size=7) == 36


async def test_owners_lists_who_holds_memories_counted_and_paged(
    storage: PostgresStorage[str, Any],
) -> None:
    from pepperpy_pg_memory import MemoryOwner, MemoryType

    for key in ("tea", "trip", "job"):
        await storage.store(key, f"ana {key}", **ANA, metadata={"topic": key})
    await storage.store("tea", "bruno tea", **BRUNO, metadata={"topic": "tea"})
    await storage.store("turn", "hello", scope=MemoryScope.SESSION, scope_id="s-1", ttl=3600)
    await storage.store("rule", "be kind", scope=MemoryScope.GLOBAL)
    await storage.store("gone", "expired", scope=MemoryScope.USER, scope_id="carla", ttl=1)
    config = storage.config.model_copy(update={"tenant": "other"})
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as other:
        await other.store("x", "another tenant's user", scope=MemoryScope.USER, scope_id="dan")
    await asyncio.sleep(1.1)  # carla's only memory expires

    everyone = await storage.owners()
    assert everyone == [
        MemoryOwner(MemoryScope.GLOBAL, "", 1),
        MemoryOwner(MemoryScope.SESSION, "s-1", 1),
        MemoryOwner(MemoryScope.USER, "ana", 3),
        MemoryOwner(MemoryScope.USER, "bruno", 1),
    ]
    # A scope alone is every owner of that scope, not its default owner.
    assert [o.scope_id for o in await storage.owners("user")] == ["ana", "bruno"]
    assert await storage.owners(MemoryScope.USER, filter={"topic": "tea"}) == [
        MemoryOwner(MemoryScope.USER, "ana", 1),
        MemoryOwner(MemoryScope.USER, "bruno", 1),
    ]
    assert await storage.owners(types=MemoryType.SHORT_TERM) == []
    assert await storage.owners(key_prefix="tr") == [MemoryOwner(MemoryScope.USER, "ana", 1)]
    # Keyset pages: the last owner listed starts the next page.
    pages, after = [], None
    while page := await storage.owners(limit=3, after=after):
        pages.append(page)
        after = (page[-1].scope, page[-1].scope_id)
    assert [len(page) for page in pages] == [3, 1] and sum(pages, []) == everyone
    assert await storage.owners(after=("user", "ana")) == everyone[3:]
    for bad in ({"limit": 0}, {"after": ("user",)}, {"after": ("nobody", "x")}):
        with pytest.raises(MemoryValidationError):
            await storage.owners(**bad)
    with pytest.raises(MemoryValidationError):
        await storage.owners("planet")
