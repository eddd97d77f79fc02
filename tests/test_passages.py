"""Passages: texts of a memory embedded one by one; a semantic search scores the memory by its
best vector (its own or a passage's). What LangGraph's per-field embedding is built on."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import asyncpg
import pytest

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.items import MAX_PASSAGES

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}
BRUNO = {"scope": MemoryScope.USER, "scope_id": "bruno"}


async def _passages(conn: asyncpg.Connection, config: PostgresConfig) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        f"SELECT scope_id, key, position, content, embedding IS NOT NULL AS embedded FROM "
        f'"{config.schema_name}"."{config.table}_passages" ORDER BY scope_id, key, position'
    )
    return [tuple(row) for row in rows]


async def _scores(
    storage: PostgresStorage[str, Any], query: str, **kwargs: Any
) -> dict[str, float]:
    hits = await storage.search(MemoryQuery(query=query, limit=20, **kwargs))
    return {hit.entry.key: hit.score for hit in hits}


@pytest.fixture
async def storage(config: PostgresConfig) -> Any:
    async with PostgresStorage[str, Any](config, HashingEmbedder(256)) as store:
        yield store


async def test_a_memory_is_scored_by_its_best_passage(
    storage: PostgresStorage[str, Any], config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    await storage.store(
        "doc1", {"title": "alpha", "body": "beta"}, text="alpha beta", passages=["alpha", "beta"]
    )
    await storage.store("doc2", {"title": "gamma"}, text="gamma", passages=["gamma"])
    assert await _passages(raw_conn, config) == [
        ("", "doc1", 0, "alpha", True),
        ("", "doc1", 1, "beta", True),
        ("", "doc2", 0, "gamma", True),
    ]
    scores = await _scores(storage, "beta")
    assert scores["doc1"] == pytest.approx(1.0, abs=1e-4)  # the passage, not "alpha beta"
    assert scores.get("doc2", 0) < 0.5
    # Hybrid search ranks by the same best vector.
    hybrid = await storage.search(MemoryQuery(query="beta", index_type=MemoryIndex.HYBRID))
    assert hybrid[0].entry.key == "doc1"
    assert hybrid[0].semantic_score == pytest.approx(1.0, abs=1e-4)


async def test_a_memory_found_only_through_a_passage(storage: PostgresStorage[str, Any]) -> None:
    await storage.store_many(
        {"key": f"filler-{i}", "value": f"filler note number {i}"} for i in range(40)
    )
    await storage.store(
        "hidden", {"n": 1}, text="unrelated words", passages=["the orange submarine"]
    )
    hits = await storage.search(MemoryQuery(query="the orange submarine", limit=1))
    assert [h.entry.key for h in hits] == ["hidden"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].entry.value == {"n": 1}
    # Pages and min_score see the same scores.
    strict = await storage.search(MemoryQuery(query="the orange submarine", min_score=0.99))
    assert [h.entry.key for h in strict] == ["hidden"]


async def test_a_write_replaces_passages_and_a_delete_removes_them(
    storage: PostgresStorage[str, Any], config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    await storage.store("doc", "text", passages=["one", "two", "three"])
    await storage.store("doc", "text", passages=["four"])
    assert [row[3] for row in await _passages(raw_conn, config)] == ["four"]
    await storage.store("doc", "text")  # no passages: it has none now
    assert await _passages(raw_conn, config) == []
    await storage.store("doc", "text", passages=["five"])
    await storage.delete("doc")
    assert await _passages(raw_conn, config) == []
    await storage.store_many([{"key": "a", "value": "a", "passages": ["x", "y"]}, ("b", "b")])
    await storage.clear()
    assert await _passages(raw_conn, config) == []


async def test_passages_belong_to_their_owner(
    storage: PostgresStorage[str, Any], config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    await storage.store("notes", "ana's", **ANA, passages=["ana likes tea"])
    await storage.store("notes", "bruno's", **BRUNO, passages=["bruno likes chess"])
    await storage.store("notes", "ana's again", **ANA, passages=["ana likes coffee"])
    assert [(row[0], row[3]) for row in await _passages(raw_conn, config)] == [
        ("ana", "ana likes coffee"),
        ("bruno", "bruno likes chess"),
    ]
    bruno_hits = await storage.search(
        MemoryQuery(query="ana likes coffee", scope=MemoryScope.USER, scope_id="bruno")
    )
    assert [h.entry.value for h in bruno_hits] == ["bruno's"]
    await storage.delete("notes", **ANA)
    assert [row[0] for row in await _passages(raw_conn, config)] == ["bruno"]


async def test_passages_in_store_many_and_in_a_burst(
    storage: PostgresStorage[str, Any], config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    await storage.store_many(
        [
            {"key": f"m{i}", "value": i, "passages": [f"word{i} first", f"word{i} second"]}
            for i in range(5)
        ]
    )
    await asyncio.gather(
        *(storage.store(f"b{i}", i, passages=[f"burst{i} passage"]) for i in range(30))
    )
    rows = await _passages(raw_conn, config)
    assert len(rows) == 5 * 2 + 30 and all(row[4] for row in rows)
    assert (await _scores(storage, "burst7 passage"))["b7"] == pytest.approx(1.0, abs=1e-4)


async def test_bad_passages_are_refused_and_nothing_is_written(
    storage: PostgresStorage[str, Any], config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    for passages, message in [
        ("a string", "list of strings"),
        ([1, 2], "must be a str"),
        (["nul\x00"], "NUL"),
        (["p"] * (MAX_PASSAGES + 1), "limit"),
    ]:
        with pytest.raises(MemoryValidationError, match=message):
            await storage.store("k", "v", passages=passages)  # type: ignore[arg-type]
    with pytest.raises(MemoryValidationError, match="SEMANTIC"):
        await storage.store("k", "v", indices=[MemoryIndex.CONTEXTUAL], passages=["p"])
    assert await storage.count() == 0
    assert await _passages(raw_conn, config) == []


async def test_export_and_import_keep_passages(
    storage: PostgresStorage[str, Any], make_config: Any
) -> None:
    await storage.store("doc", {"a": 1}, **ANA, passages=["first field", "second field"])
    await storage.store("plain", "no passages")
    buffer = io.StringIO()
    assert await storage.export_jsonl(buffer) == 2
    assert '"passages": ["first field", "second field"]' in buffer.getvalue()
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(256)) as other:
        report = await other.import_jsonl(io.StringIO(buffer.getvalue()))
        assert report.stored == 2 and report.failed == 0
        scores = await _scores(other, "second field", scope=MemoryScope.USER, scope_id="ana")
        assert scores["doc"] == pytest.approx(1.0, abs=1e-4)
        # Importing again changes nothing.
        await other.import_jsonl(io.StringIO(buffer.getvalue()))
        assert await other.count() == 2


async def test_reindex_re_embeds_passages_with_a_new_model(make_config: Any) -> None:
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as first:
        await first.store("doc", "own text", passages=["the passage text"])
    again = config.model_copy(update={"on_dimension_mismatch": "reindex"})
    async with PostgresStorage[str, Any](again, HashingEmbedder(128)) as second:
        assert second.layout.dimension == 128
        scores = await _scores(second, "the passage text")
        assert scores["doc"] == pytest.approx(1.0, abs=1e-4)


async def test_a_store_finds_passages_another_process_wrote(config: PostgresConfig) -> None:
    async with (
        PostgresStorage[str, Any](config, HashingEmbedder(256)) as reader,
        PostgresStorage[str, Any](config, HashingEmbedder(256)) as writer,
    ):
        await writer.store_many({"key": f"f{i}", "value": f"filler {i}"} for i in range(20))
        # The reader has seen no passage yet: its first search learns that some exist.
        assert (await _scores(reader, "filler 3"))["f3"] == pytest.approx(1.0, abs=1e-4)
        await writer.store("hidden", "unrelated words", passages=["violet lantern"])
        for index in (MemoryIndex.SEMANTIC, MemoryIndex.HYBRID):
            hits = await reader.search(MemoryQuery(query="violet lantern", index_type=index))
            assert hits[0].entry.key == "hidden", index
        # A search whose filter leaves only the passage's memory.
        only = await reader.search(MemoryQuery(query="violet lantern", keys=["hidden"], limit=5))
        assert [h.entry.key for h in only] == ["hidden"]
