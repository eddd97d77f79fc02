"""The per-owner quota: at the limit a new memory evicts the owner's lowest-ranked memory
that is not long-term, with a trace in its history; with nothing to evict, nothing is written."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryQuotaError,
    MemoryScope,
    MemoryType,
    PostgresStorage,
)

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}
BRUNO = {"scope": MemoryScope.USER, "scope_id": "bruno"}
SHORT = {"type": MemoryType.SHORT_TERM}


@pytest.fixture
async def storage(make_config: Any) -> Any:
    config = make_config(max_memories_per_owner=3)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        yield store


async def _keys(storage: PostgresStorage[str, Any], **owner: Any) -> list[str]:
    return sorted(entry.key for entry in await storage.list(**owner))


async def test_the_least_important_then_least_recent_memory_makes_room(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("fact", "Ana lives in Lisbon", **ANA)  # long-term: never evicted
    await storage.store("old", "Ana asked about trains", **ANA, **SHORT, importance=0.3)
    await storage.store("older-but-vital", "Ana's train is at 9", **ANA, **SHORT, importance=0.9)
    await storage.store("bruno", "Bruno likes jazz", **BRUNO, **SHORT, importance=0.0)
    new = await storage.store("new", "Ana asked about buses", **ANA, **SHORT)
    assert new.key == "new"
    assert await _keys(storage, **ANA) == ["fact", "new", "older-but-vital"]
    assert await _keys(storage, **BRUNO) == ["bruno"]  # another owner's memory is untouched
    evicted = (await storage.history("old", **ANA))[0]
    assert (evicted.operation, evicted.value) == ("evict", "Ana asked about trains")
    assert evicted.reason == "quota: at most 3 memories per owner"
    # The eviction is a deletion like any other: the memory can be restored.
    restored = await storage.restore("old", **ANA, version=evicted.version - 1)
    assert restored.value == "Ana asked about trains"


async def test_equal_importance_evicts_the_least_recently_read(
    storage: PostgresStorage[str, Any],
) -> None:
    for key in ("a", "b", "c"):
        await storage.store(key, f"note {key}", **ANA, **SHORT)
    await storage.retrieve("a", **ANA)  # read: now the most recent
    await storage.flush_access_counts()
    await storage.store("d", "note d", **ANA, **SHORT)
    assert await _keys(storage, **ANA) == ["a", "c", "d"]


async def test_an_update_takes_no_room_and_a_full_long_term_owner_refuses(
    storage: PostgresStorage[str, Any],
) -> None:
    for key in ("a", "b", "c"):
        await storage.store(key, f"fact {key}", **ANA)
    updated = await storage.store("a", "fact a, corrected", **ANA)
    assert updated.version == 2
    with pytest.raises(MemoryQuotaError, match="user:ana holds 3 memories"):
        await storage.store("d", "one fact too many", **ANA, **SHORT)
    with pytest.raises(MemoryQuotaError):
        await storage.store_many([("e", "x"), ("f", "y")], **ANA)
    assert await _keys(storage, **ANA) == ["a", "b", "c"]  # nothing written, nothing lost
    assert not await storage.history("d", **ANA)


async def test_a_batch_never_evicts_its_own_rows(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("old", "old note", **ANA, **SHORT)
    written = await storage.store_many([(f"n{i}", f"note {i}") for i in range(3)], **ANA, **SHORT)
    assert int(written) == 3
    assert await _keys(storage, **ANA) == ["n0", "n1", "n2"]
    with pytest.raises(MemoryQuotaError):
        await storage.store_many([(f"m{i}", f"more {i}") for i in range(4)], **ANA, **SHORT)
    assert await _keys(storage, **ANA) == ["n0", "n1", "n2"]


async def test_one_batch_of_several_owners_fills_each_owners_room_exactly(
    storage: PostgresStorage[str, Any],
) -> None:
    # The room is counted once per owner and transaction, then spent row by row: the
    # owners of one batch each get theirs, and the row that finds none makes room.
    await storage.store("old", "old note", **ANA, **SHORT, importance=0.1)
    items = []
    for i in range(2):
        items.append({"key": f"a{i}", "value": f"ana {i}", **ANA, **SHORT})
        items.append({"key": f"b{i}", "value": f"bruno {i}", **BRUNO, **SHORT})
    items.append({"key": "a0", "value": "ana 0, again", **ANA, **SHORT})  # the last one counts
    assert int(await storage.store_many(items)) == 4
    assert await _keys(storage, **ANA) == ["a0", "a1", "old"]
    assert await _keys(storage, **BRUNO) == ["b0", "b1"]
    batch = [{"key": "a2", "value": "ana 2", **ANA, **SHORT}]
    batch += [{"key": f"b{i}", "value": f"bruno {i}", **BRUNO, **SHORT} for i in (2, 3)]
    await storage.store_many(batch)
    assert await _keys(storage, **ANA) == ["a0", "a1", "a2"]  # "old" made room
    assert await storage.count(**BRUNO) == 3  # one of bruno's made room for the fourth
    assert "b3" in await _keys(storage, **BRUNO)


async def test_adapter_records_neither_count_nor_make_room(
    storage: PostgresStorage[str, Any],
) -> None:
    transcript = [{"key": f"msg-{i}", "value": "yes", "managed_by": "test"} for i in range(5)]
    await storage.store_many(transcript, **ANA, **SHORT)
    for key in ("a", "b", "c", "d"):
        await storage.store(key, f"note {key}", **ANA, **SHORT)
    keys = await _keys(storage, **ANA)
    assert [key for key in keys if not key.startswith("msg-")] == ["b", "c", "d"]
    assert len(keys) == 8


async def test_concurrent_writers_of_one_owner_never_exceed_the_quota(
    storage: PostgresStorage[str, Any],
) -> None:
    await asyncio.gather(
        *(storage.store(f"k{i}", f"note {i}", **ANA, **SHORT) for i in range(12)),
        *(storage.store_many([(f"b{i}", f"batch {i}")], **ANA, **SHORT) for i in range(6)),
    )
    assert await storage.count(**ANA) == 3
    evictions = 0
    for key in [f"k{i}" for i in range(12)] + [f"b{i}" for i in range(6)]:
        versions = await storage.history(key, **ANA)
        evictions += sum(version.operation == "evict" for version in versions)
    assert evictions == 15


async def test_without_history_an_eviction_is_still_recorded(
    make_config: Any, raw_conn: Any
) -> None:
    config = make_config(max_memories_per_owner=1, history=False)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store("first", "first note", **ANA, **SHORT)
        await store.store("second", "second note", **ANA, **SHORT)
        versions = await store.history("first", **ANA)
        assert [v.operation for v in versions] == ["evict", "create"]
        assert versions[1].value == "first note"
        recorded = await raw_conn.fetch(
            f"SELECT key, operation FROM {store.layout.qualified_history} ORDER BY at"
        )
        # History stays off otherwise: only the evicted memory's versions were written.
        assert [tuple(row) for row in recorded] == [("first", "create"), ("first", "evict")]


async def test_a_store_without_a_quota_is_not_limited(make_config: Any) -> None:
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store_many([(f"k{i}", f"note {i}") for i in range(10)], **ANA, **SHORT)
        assert await store.count(**ANA) == 10


async def test_memories_kept_by_a_ttl_refresh_count_toward_the_quota(
    storage: PostgresStorage[str, Any], raw_conn: Any
) -> None:
    # Past their own expiry but refreshed, memories are live: at the limit, a new one evicts.
    if storage.layout.distributed:
        pytest.skip("TTL refreshes are kept beside the memories on one server only")
    for key in ("a", "b", "c"):
        await storage.store(key, f"note {key}", **ANA, **SHORT, ttl=3600)
    assert await storage.touch(["a", "b", "c"], 7200, **ANA) == 3
    config = storage.config
    async with raw_conn.transaction():
        await raw_conn.execute(
            f'UPDATE "{config.schema_name}"."{config.table}" '
            "SET expires_at = expires_at - interval '90 minutes'"
        )
        await raw_conn.execute(
            f'UPDATE "{config.schema_name}"."{config.table}_refreshes" '
            "SET refreshed_from = refreshed_from - interval '90 minutes', "
            "expires_at = expires_at - interval '90 minutes'"
        )
    assert len(await _keys(storage, **ANA)) == 3
    await storage.store("d", "note d", **ANA, **SHORT)
    held = await _keys(storage, **ANA)
    assert len(held) == 3 and "d" in held
