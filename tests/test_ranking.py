"""Importance, read counts kept beside the memory, and ranking by relevance, recency and
importance in the database."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from helpers import until
from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryConfigurationError,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
    Ranking,
)

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}


@pytest.fixture
async def storage(make_config: Any) -> Any:
    # A long interval: tests flush explicitly, so that nothing depends on timing.
    config = make_config(access_flush_interval=600)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        yield store


def _table(storage: PostgresStorage[str, Any]) -> str:
    return storage.layout.qualified_table


async def test_importance_is_stored_checked_and_exported(
    storage: PostgresStorage[str, Any], make_config: Any, tmp_path: Path
) -> None:
    assert (await storage.store("plain", "a memory", **ANA)).importance == 0.5
    high = await storage.store("high", "an important memory", **ANA, importance=0.9)
    assert high.importance == pytest.approx(0.9)
    assert (await storage.retrieve("high", **ANA)).importance == pytest.approx(0.9)
    await storage.store_many([{"key": "many", "value": "from a batch", "importance": 0.2}], **ANA)
    assert (await storage.retrieve("many", **ANA)).importance == pytest.approx(0.2)
    for bad in (1.5, -0.1, True, "high"):
        with pytest.raises(MemoryValidationError, match="importance"):
            await storage.store("bad", "x", **ANA, importance=bad)
    # A version records it; an export carries it.
    assert (await storage.history("high", **ANA))[0].importance == pytest.approx(0.9)
    # So are the read counts (one retrieve above), and importing twice counts them once.
    await storage.flush_access_counts()
    backup = tmp_path / "backup.jsonl"
    await storage.export_jsonl(backup, with_history=True)
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(64)) as other:
        await other.import_jsonl(backup)
        await other.import_jsonl(backup)
        restored = await other.retrieve("high", **ANA)
        assert restored.importance == pytest.approx(0.9)
        assert (restored.access_count, restored.last_accessed_at is not None) == (1, True)
        assert (await other.history("high", **ANA))[0].importance == pytest.approx(0.9)


async def test_reads_are_counted_beside_the_memory_row(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    stored = await storage.store("tea", "Ana drinks green tea", **ANA)
    await storage.store("chess", "Ana plays chess", **ANA)
    row_before = await raw_conn.fetchrow(
        f"SELECT ctid, xmin::text FROM {_table(storage)} WHERE key = 'tea'"
    )
    await storage.retrieve("tea", **ANA)
    await storage.search(MemoryQuery(query="green tea", limit=1, **ANA))
    await storage.search(
        MemoryQuery(query="green tea", index_type=MemoryIndex.CONTEXTUAL, limit=1, **ANA)
    )
    assert (await storage.retrieve("chess", **ANA)).access_count == 0  # not flushed yet
    await storage.flush_access_counts()
    tea = await storage.retrieve("tea", **ANA)
    assert tea.access_count == 3 and tea.last_accessed_at is not None
    assert (await storage.retrieve("chess", **ANA)).access_count == 1
    # Bookkeeping: the memory row is the same tuple, with no new version or updated_at.
    row_after = await raw_conn.fetchrow(
        f"SELECT ctid, xmin::text FROM {_table(storage)} WHERE key = 'tea'"
    )
    assert tuple(row_after) == tuple(row_before)
    assert (tea.version, tea.updated_at) == (1, stored.updated_at)
    assert len(await storage.history("tea", **ANA)) == 1
    # Listing is not reading a memory: no count.
    await storage.list(**ANA)
    await storage.flush_access_counts()
    assert (await storage.retrieve("chess", **ANA)).access_count == 2  # this retrieve's


async def test_a_search_reads_the_counts_only_when_asked_or_ranked_by_recency(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("tea", "Ana drinks green tea", **ANA)
    await storage.retrieve("tea", **ANA)
    await storage.flush_access_counts()
    for mode in MemoryIndex:
        plain = MemoryQuery(query="green tea", index_type=mode, limit=1, **ANA)
        (hit,) = await storage.search(plain)
        assert (hit.entry.access_count, hit.entry.last_accessed_at) == (None, None), mode
        await storage.flush_access_counts()  # each search is a read
        asked = plain.model_copy(update={"include_access_counts": True})
        (hit,) = await storage.search(asked)
        assert hit.entry.access_count is not None and hit.entry.access_count >= 2, mode
        assert hit.entry.last_accessed_at is not None
    by_recency = Ranking(relevance=1.0, recency=0.5)
    (hit,) = await storage.search(MemoryQuery(query="tea", ranking=by_recency, limit=1, **ANA))
    assert hit.entry.access_count is not None and hit.entry.access_count > 0
    by_importance = Ranking(relevance=1.0, importance=0.5)
    (hit,) = await storage.search(MemoryQuery(query="tea", ranking=by_importance, limit=1, **ANA))
    assert hit.entry.access_count is None
    # Reads that return one memory read its counts as before.
    assert (await storage.retrieve("tea", **ANA)).access_count is not None


async def test_counts_are_written_in_the_background_and_at_close(make_config: Any) -> None:
    config = make_config(access_flush_interval=0.2)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store("k", "a memory", **ANA)
        for _ in range(5):
            await store.retrieve("k", **ANA)

        async def written() -> bool:  # listing is not a read: it counts nothing
            (entry,) = await store.list(keys=["k"], **ANA)
            assert entry.access_count in (0, 5)  # one write for the five reads
            return entry.access_count == 5

        await until(written, 30, "the background flush")
        counted = await store.retrieve("k", **ANA)
        assert counted.access_count == 5  # this read is noted, not yet written
    async with PostgresStorage[str, Any](
        config.model_copy(update={"access_flush_interval": 600}), HashingEmbedder(64)
    ) as store:
        await store.retrieve("k", **ANA)
        await store.retrieve("k", **ANA)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        assert (await store.retrieve("k", **ANA)).access_count == 8  # close() wrote them


async def test_a_deleted_memory_takes_its_counts_along(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    await storage.store("k", "a memory", **ANA)
    await storage.retrieve("k", **ANA)
    await storage.flush_access_counts()
    await storage.retrieve("k", **ANA)  # noted, then the memory goes before the flush
    await storage.delete("k", **ANA)
    await storage.flush_access_counts()
    access = storage.layout.qualified_access
    assert await raw_conn.fetchval(f"SELECT count(*) FROM {access}") == 0
    again = await storage.store("k", "stored again", **ANA)
    assert again.access_count == 0


async def test_without_a_ranking_results_are_the_index_order(
    storage: PostgresStorage[str, Any],
) -> None:
    for i, text in enumerate(["green tea", "green tea and milk", "black coffee", "chess"]):
        await storage.store(f"m{i}", text, **ANA, importance=i / 4)
    plain = await storage.search(MemoryQuery(query="green tea", limit=4, **ANA))
    assert [hit.entry.key for hit in plain][:2] == ["m0", "m1"]
    assert all(hit.relevance_score is None for hit in plain)


async def test_importance_and_recency_reorder_the_candidates(
    storage: PostgresStorage[str, Any],
) -> None:
    for i, text in enumerate(["green tea", "green tea and milk", "green tea with lemon"]):
        await storage.store(f"m{i}", text, **ANA, importance=[0.1, 0.9, 0.5][i])
    by_importance = await storage.search(
        MemoryQuery(
            query="green tea", limit=3, ranking=Ranking(relevance=0.0, importance=1.0), **ANA
        )
    )
    assert [hit.entry.key for hit in by_importance] == ["m1", "m2", "m0"]
    best = by_importance[0]
    assert best.importance_score == pytest.approx(0.9) and best.score == pytest.approx(0.9)

    # A read just now makes a memory recent; the others' age is since they were created.
    await storage.retrieve("m2", **ANA)
    await storage.flush_access_counts()
    recency = Ranking(relevance=0.0, recency=1.0, half_life=timedelta(milliseconds=200))
    await asyncio.sleep(0.4)
    await storage.retrieve("m0", **ANA)
    await storage.flush_access_counts()
    by_recency = await storage.search(
        MemoryQuery(query="green tea", limit=3, ranking=recency, **ANA)
    )
    assert [hit.entry.key for hit in by_recency][0] == "m0"
    recencies = [hit.recency_score for hit in by_recency]
    assert all(score is not None and 0 <= score <= 1 for score in recencies), recencies

    # Relevance is the index's score in [0, 1]: (1 + cosine) / 2 for semantic search.
    mixed = await storage.search(MemoryQuery(query="green tea", limit=3, ranking=Ranking(), **ANA))
    unranked = await storage.search(MemoryQuery(query="green tea", limit=3, **ANA))
    cosine = {hit.entry.key: hit.score for hit in unranked}
    for hit in mixed:
        assert hit.relevance_score == pytest.approx((1 + cosine[hit.entry.key]) / 2, abs=1e-5)
        assert hit.score == pytest.approx(hit.relevance_score)


@pytest.mark.parametrize(
    "index", [MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID, MemoryIndex.TEMPORAL]
)
async def test_every_search_kind_can_be_ranked(
    storage: PostgresStorage[str, Any], index: MemoryIndex
) -> None:
    await storage.store("low", "green tea in the morning", **ANA, importance=0.0)
    await storage.store("high", "green tea at night", **ANA, importance=1.0)
    query = None if index is MemoryIndex.TEMPORAL else "green tea"
    ranking = Ranking(relevance=0.1, importance=1.0)
    hits = await storage.search(
        MemoryQuery(query=query, index_type=index, limit=2, ranking=ranking, **ANA)
    )
    assert [hit.entry.key for hit in hits] == ["high", "low"]
    assert all(0 <= (hit.relevance_score or -1) <= 1 for hit in hits)
    # Paging and min_score apply to the ranked score.
    second = await storage.search(
        MemoryQuery(query=query, index_type=index, limit=1, offset=1, ranking=ranking, **ANA)
    )
    assert [hit.entry.key for hit in second] == ["low"]
    above = await storage.search(
        MemoryQuery(query=query, index_type=index, min_score=0.9, ranking=ranking, **ANA)
    )
    assert [hit.entry.key for hit in above] == ["high"]


def test_a_ranking_must_weigh_something() -> None:
    with pytest.raises(MemoryValidationError, match="weight"):
        Ranking(relevance=0.0)
    with pytest.raises(MemoryValidationError, match="half_life"):
        Ranking(half_life=timedelta(0))
    with pytest.raises(MemoryValidationError, match="recency"):
        Ranking(recency=-1.0)


async def test_access_counts_need_a_positive_interval(make_config: Any) -> None:
    with pytest.raises(MemoryConfigurationError, match="access_flush_interval"):
        make_config(access_flush_interval=0)
    assert isinstance(make_config(), PostgresConfig)


async def test_tracking_can_be_switched_off(make_config: Any) -> None:
    config = make_config(track_access=False)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store("k", "a memory", **ANA)
        await store.retrieve("k", **ANA)
        await store.flush_access_counts()
        assert (await store.retrieve("k", **ANA)).access_count == 0


async def test_the_stores_own_look_ups_are_not_reads(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("mood", "happy", **ANA)
    await storage.supersede("mood", "tired", **ANA)
    await storage.invalidate("mood", **ANA)
    await storage.flush_access_counts()
    closed = await storage.retrieve("mood", **ANA, include_invalid=True)
    assert closed.access_count == 0
