"""store / retrieve / upsert semantics, values and keys, against real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

from helpers import CountingEmbedder
from pepperpy_pg_memory import (
    MemoryError,
    MemoryIndex,
    MemoryNotFoundError,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
)


async def test_seed_example_round_trip(storage: PostgresStorage[str, Any]) -> None:
    entry = await storage.store(
        key="doc-1",
        value={"content": "Example document"},
        type=MemoryType.SHORT_TERM,
        scope=MemoryScope.SESSION,
        indices={MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL},
    )
    assert entry.key == "doc-1"
    assert entry.scope_id == "default"  # config.default_scope_id when omitted
    assert entry.text == "Example document"
    assert entry.expires_at is not None  # SHORT_TERM expires by default

    retrieved = await storage.retrieve("doc-1")
    assert retrieved.value == {"content": "Example document"}
    assert retrieved.type is MemoryType.SHORT_TERM
    assert retrieved.scope is MemoryScope.SESSION
    assert retrieved.indices == {MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL}
    assert retrieved.created_at == entry.created_at

    assert await storage.delete("doc-1") is True
    assert await storage.delete("doc-1") is False
    with pytest.raises(MemoryError) as caught:
        await storage.retrieve("doc-1")
    assert caught.value.store_type == "postgres"


async def test_missing_key_is_a_key_error_with_store_type(
    storage: PostgresStorage[str, Any],
) -> None:
    with pytest.raises(KeyError) as caught:
        await storage.retrieve("non-existent")
    error = caught.value
    assert isinstance(error, MemoryNotFoundError)
    assert error.store_type == "postgres"
    assert str(error) == "no memory with key 'non-existent'"


@pytest.mark.parametrize(
    "value, text",
    [
        ("just a string", "just a string"),
        ({"content": "the content field", "extra": 1}, "the content field"),
        ({"title": "A title", "body": {"text": "nested text"}, "n": 3}, "A title\nnested text"),
        (["first", 2, "third"], "first\nthird"),
        (42, "42"),
        (3.5, "3.5"),
        (True, "true"),
    ],
)
async def test_values_round_trip_with_documented_text(
    storage: PostgresStorage[str, Any], value: Any, text: str
) -> None:
    entry = await storage.store("k", value)
    assert entry.text == text
    retrieved = await storage.retrieve("k")
    assert retrieved.value == value
    assert retrieved.text == text


class Note(BaseModel):
    content: str
    tags: list[str]


async def test_pydantic_values_come_back_as_the_declared_model(config: PostgresConfig) -> None:
    from pepperpy_pg_memory import HashingEmbedder

    async with PostgresStorage[str, Note](config, HashingEmbedder(32)) as notes:
        await notes.store("n1", Note(content="buy milk", tags=["errand"]))
        entry = await notes.retrieve("n1")
        assert entry.value == Note(content="buy milk", tags=["errand"])
        assert entry.text == "buy milk"


class NoteStore(PostgresStorage[str, Note]):
    """A subclass declares the value type in its base (no __orig_class__ on instances)."""


async def test_value_type_given_explicitly_or_by_a_subclass(config: PostgresConfig) -> None:
    from pepperpy_pg_memory import HashingEmbedder

    async with NoteStore(config, HashingEmbedder(32)) as notes:
        await notes.store("n1", Note(content="buy milk", tags=["errand"]))
        assert (await notes.retrieve("n1")).value == Note(content="buy milk", tags=["errand"])
    async with PostgresStorage(config, HashingEmbedder(32), value_type=Note) as explicit:
        assert isinstance((await explicit.retrieve("n1")).value, Note)
    async with PostgresStorage(config, HashingEmbedder(32)) as untyped:
        assert (await untyped.retrieve("n1")).value == {"content": "buy milk", "tags": ["errand"]}


async def test_text_of_hook_decides_what_is_indexed(config: PostgresConfig) -> None:
    from pepperpy_pg_memory import HashingEmbedder, MemoryQuery

    async with PostgresStorage[str, dict[str, str]](
        config, HashingEmbedder(32), text_of=lambda value: value["question"]
    ) as store:
        entry = await store.store("faq", {"question": "How do refunds work?", "answer": "30 days"})
        assert entry.text == "How do refunds work?"
        hits = await store.search(MemoryQuery(query="refunds", index_type=MemoryIndex.CONTEXTUAL))
        assert [hit.entry.key for hit in hits] == ["faq"]
        assert not await store.search(MemoryQuery(query="days", index_type=MemoryIndex.CONTEXTUAL))


async def test_a_text_of_that_returns_no_string_is_a_validation_error(
    config: PostgresConfig,
) -> None:
    from pepperpy_pg_memory import HashingEmbedder

    async with PostgresStorage[str, Any](config, HashingEmbedder(8), text_of=len) as store:
        with pytest.raises(MemoryValidationError, match="must be a str, not int"):
            await store.store("k", "a value", type=MemoryType.EPISODIC)
        assert await store.count() == 0


async def test_upsert_keeps_created_at_and_replaces_everything_else(
    storage: PostgresStorage[str, Any],
) -> None:
    owner = {"scope": MemoryScope.USER, "scope_id": "u1"}
    first = await storage.store("k", "first text", metadata={"v": 1}, **owner)
    await asyncio.sleep(0.01)
    second = await storage.store(
        "k", "second text", metadata={"v": 2}, type=MemoryType.EPISODIC, **owner
    )
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    stored = await storage.retrieve("k", **owner)
    assert (stored.value, stored.metadata, stored.type, stored.scope, stored.scope_id) == (
        "second text",
        {"v": 2},
        MemoryType.EPISODIC,
        MemoryScope.USER,
        "u1",
    )
    assert await storage.count() == 1


async def test_reembeds_only_when_text_changes(config: PostgresConfig) -> None:
    embedder = CountingEmbedder(32)
    async with PostgresStorage[str, Any](config, embedder) as store:
        await store.store("k", {"content": "same text", "n": 1})
        assert embedder.embedded_texts == ["same text"]
        store.embedding_cache.clear()  # force the database-side check, not the in-process cache
        await store.store("k", {"content": "same text", "n": 2})
        assert embedder.embedded_texts == ["same text"]
        await store.store("k", {"content": "new text"})
        assert embedder.embedded_texts == ["same text", "new text"]
        entry = await store.retrieve("k", include_embedding=True)
        assert entry.embedding is not None
        expected = await embedder.embed_query("new text")
        assert entry.embedding == pytest.approx([float(x) for x in expected], abs=1e-6)


async def test_unchanged_upsert_keeps_its_vector(config: PostgresConfig) -> None:
    embedder = CountingEmbedder(32)
    async with PostgresStorage[str, Any](config, embedder) as store:
        await store.store("k", "stable text", metadata={"n": 1})
        before = (await store.retrieve("k", include_embedding=True)).embedding
        store.embedding_cache.clear()
        await store.store("k", "stable text", metadata={"n": 2})
        after = await store.retrieve("k", include_embedding=True)
        assert after.embedding == before
        assert after.metadata == {"n": 2}


async def test_storing_without_semantic_index_skips_the_embedder(config: PostgresConfig) -> None:
    embedder = CountingEmbedder(32)
    async with PostgresStorage[str, Any](config, embedder) as store:
        await store.store("k", "words only", indices={MemoryIndex.CONTEXTUAL})
        await store.store("kv", "no index at all", indices=set())
        assert embedder.batches == []
        assert (await store.retrieve("k")).indices == {MemoryIndex.CONTEXTUAL}
        assert (await store.retrieve("kv")).indices == frozenset()


async def test_precomputed_embedding_is_used_as_given(config: PostgresConfig) -> None:
    embedder = CountingEmbedder(4)
    async with PostgresStorage[str, Any](config, embedder) as store:
        await store.store("k", "text", embedding=[0.0, 1.0, 0.0, 0.0])
        assert embedder.batches == []
        entry = await store.retrieve("k", include_embedding=True)
        assert entry.embedding == [0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "key, message",
    [
        ("", "empty"),
        ("x" * 2049, "limit is 2,048 bytes"),
        ("é" * 1025, "2,050 bytes in UTF-8"),
        ("bad\x00key", r"U\+0000"),
        ("tab\tkey", r"U\+0009"),
        (42, "must be strings"),
    ],
)
async def test_bad_keys_are_rejected_and_nothing_is_written(
    storage: PostgresStorage[str, Any], key: Any, message: str
) -> None:
    with pytest.raises(MemoryValidationError, match=message):
        await storage.store(key, "value")
    assert await storage.count() == 0


@pytest.mark.parametrize(
    "value, message",
    [
        ({"a": {1, 2}}, "not JSON-serialisable"),
        ({"a": object()}, "not JSON-serialisable"),
        ({1: "int key"}, "non-string key"),
        ("text with \x00 NUL", "NUL"),
        ({"nested": ["ok", "bad\x00"]}, "NUL"),
        ({"x": float("nan")}, "JSON cannot represent"),
        ("lone \ud800 surrogate", "not valid Unicode"),
        (b"\xff\xfe raw bytes", "not JSON-serialisable"),
        (None, "nothing to remember"),
    ],
)
async def test_bad_values_are_rejected_and_nothing_is_written(
    storage: PostgresStorage[str, Any], value: Any, message: str
) -> None:
    with pytest.raises(MemoryValidationError, match=message):
        await storage.store("k", value)
    assert await storage.count() == 0


@pytest.mark.parametrize(
    "restriction, message",
    [
        ({"key_prefix": "a\x00"}, "NUL"),
        ({"key_prefix": ("ok", "lone \ud800")}, "not valid Unicode"),
        ({"key_prefix": ("ok", 7)}, "must be strings"),
    ],
)
async def test_bad_key_restrictions_are_refused_before_the_server(
    storage: PostgresStorage[str, Any], restriction: dict[str, Any], message: str
) -> None:
    # (The server would refuse them too, as "the server rejected the data"; with replicas,
    # that used to count against the replica.)
    await storage.store("a", "value")
    for call in (storage.count, storage.list, storage.delete_many):
        with pytest.raises(MemoryValidationError, match=message):
            await call(**restriction)
    with pytest.raises(MemoryValidationError, match="NUL"):
        await storage.search(MemoryQuery(query="value", keys=frozenset({"a\x00"})))
    assert await storage.count() == 1


async def test_oversized_value_is_rejected(make_config: Any) -> None:
    from pepperpy_pg_memory import HashingEmbedder

    config = make_config(max_value_bytes=1_000)
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        with pytest.raises(MemoryValidationError, match="limit is 1,000"):
            await store.store("big", "x" * 2_000)
        assert await store.count() == 0


async def test_bad_metadata_scope_and_type_are_rejected(
    storage: PostgresStorage[str, Any],
) -> None:
    with pytest.raises(MemoryValidationError, match="metadata must be a mapping"):
        await storage.store("k", "v", metadata=["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(MemoryValidationError, match="invalid scope"):
        await storage.store("k", "v", scope="planet")
    with pytest.raises(MemoryValidationError, match="invalid type"):
        await storage.store("k", "v", type="forever")
    with pytest.raises(MemoryValidationError, match="GLOBAL memories have no scope_id"):
        await storage.store("k", "v", scope=MemoryScope.GLOBAL, scope_id="someone")
    assert await storage.count() == 0


async def test_enum_values_are_accepted_as_strings(storage: PostgresStorage[str, Any]) -> None:
    entry = await storage.store("k", "v", type="episodic", scope="user", scope_id="u")
    assert entry.type is MemoryType.EPISODIC and entry.scope is MemoryScope.USER


async def test_exists_count_and_list_paging(storage: PostgresStorage[str, Any]) -> None:
    for i in range(7):
        await storage.store(
            f"k{i}",
            f"memory {i}",
            type=MemoryType.LONG_TERM if i % 2 else MemoryType.EPISODIC,
            metadata={"i": i},
        )
    assert await storage.exists("k3")
    assert not await storage.exists("nope")
    assert await storage.count() == 7
    assert await storage.count(types=MemoryType.EPISODIC) == 4
    assert await storage.count(filter={"i": {"$gte": 5}}) == 2

    pages = [
        [e.key for e in await storage.list(order_by="key", descending=False, limit=3, offset=o)]
        for o in (0, 3, 6)
    ]
    assert pages == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6"]]
    newest = await storage.list(limit=1)
    assert newest[0].key == "k6"
    with pytest.raises(MemoryValidationError):
        await storage.list(limit=0)


async def test_delete_many_needs_a_criterion_and_respects_it(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("a", "x", scope=MemoryScope.USER, scope_id="u1", metadata={"t": "a"})
    await storage.store("b", "x", scope=MemoryScope.USER, scope_id="u1", metadata={"t": "b"})
    await storage.store("c", "x", scope=MemoryScope.USER, scope_id="u2", metadata={"t": "a"})
    with pytest.raises(MemoryValidationError, match="clear"):
        await storage.delete_many()
    assert await storage.delete_many(scope=MemoryScope.USER, scope_id="u1", filter={"t": "a"}) == 1
    assert await storage.delete_many(keys=["b", "zzz"]) == 1
    assert [e.key for e in await storage.list()] == ["c"]
    assert await storage.clear() == 1
    assert await storage.count() == 0


async def test_operations_before_start_fail_clearly(config: PostgresConfig) -> None:
    from pepperpy_pg_memory import HashingEmbedder

    store = PostgresStorage[str, Any](config, HashingEmbedder(8))
    with pytest.raises(MemoryError, match="not started"):
        await store.retrieve("k")
    await store.close()  # closing a store that never started is harmless


async def test_start_and_close_are_idempotent(config: PostgresConfig) -> None:
    from pepperpy_pg_memory import HashingEmbedder

    store = PostgresStorage[str, Any](config, HashingEmbedder(8))
    await store.start()
    await store.start()
    await store.store("k", "v")
    await store.close()
    await store.close()
    assert not store.started


async def test_expires_at_validation(storage: PostgresStorage[str, Any]) -> None:
    with pytest.raises(MemoryValidationError, match="timezone-aware"):
        await storage.store("k", "v", expires_at=datetime(2100, 1, 1))
    with pytest.raises(MemoryValidationError, match="in the past"):
        await storage.store("k", "v", expires_at=datetime.now(timezone.utc) - timedelta(1))
    with pytest.raises(MemoryValidationError, match="not both"):
        await storage.store("k", "v", ttl=10, expires_at=datetime.now(timezone.utc) + timedelta(1))
    with pytest.raises(MemoryValidationError, match="positive"):
        await storage.store("k", "v", ttl=-5)
    assert await storage.count() == 0


async def test_a_ten_megabyte_value_is_refused_by_default(
    storage: PostgresStorage[str, Any],
) -> None:
    with pytest.raises(MemoryValidationError, match="the limit is 1,048,576"):
        await storage.store("huge", {"content": "x" * 10_000_000})
    assert await storage.count() == 0


async def test_numbers_beyond_64_bits_come_back_exactly(
    storage: PostgresStorage[str, Any],
) -> None:
    # Rows are decoded by orjson, which would read these as floats: they must not be.
    value = {"id": 2**70 + 1, "neg": -(2**65), "list": [10**30, 1.5], "text": "9" * 25}
    await storage.store("big", value, metadata={"order": 12345678901234567890123})
    entry = await storage.retrieve("big")
    assert entry.value == value and isinstance(entry.value["id"], int)
    assert entry.metadata == {"order": 12345678901234567890123}


def test_key_check_refuses_exactly_the_control_and_surrogate_characters() -> None:
    import sys
    import unicodedata

    from pepperpy_pg_memory.values import CONTROL_OR_SURROGATE

    for code in range(sys.maxunicode + 1):
        char = chr(code)
        expected = unicodedata.category(char) in ("Cc", "Cs")
        assert (CONTROL_OR_SURROGATE.search(char) is not None) == expected, hex(code)
