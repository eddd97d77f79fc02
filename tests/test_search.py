"""search() in every mode, similar(), scores, paging and filters on a real database."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import numpy as np
import pytest

from helpers import plan_nodes
from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryConfigurationError,
    MemoryIndex,
    MemoryIndexError,
    MemoryNotFoundError,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    MemoryValidationError,
    PostgresStorage,
    Ranking,
)
from pepperpy_pg_memory.database import CACHEABLE_STATEMENT_BYTES, PlannedOnce
from pepperpy_pg_memory.search_sql import Page
from pepperpy_pg_memory.sql import Query

CORPUS = {
    "coffee": "Ana drinks her coffee with oat milk every morning",
    "tea": "Bruno prefers green tea in the afternoon",
    "router": "Restart the router when the internet connection drops",
    "refund": "Refunds are accepted within thirty days with a receipt",
    "hiking": "Planning a hiking trip to Patagonia next March",
}


@pytest.fixture
async def corpus(storage: PostgresStorage[str, Any]) -> PostgresStorage[str, Any]:
    await storage.store_many(
        {"key": key, "value": {"content": text}, "metadata": {"len": len(text)}}
        for key, text in CORPUS.items()
    )
    return storage


async def test_semantic_search_ranks_by_cosine_similarity(
    corpus: PostgresStorage[str, Any],
) -> None:
    results = [r async for r in corpus.search(MemoryQuery(query=CORPUS["router"], limit=3))]
    assert results[0].entry.key == "router"
    assert results[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= r.score <= 1.0 for r in results)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    assert all(r.index_type is MemoryIndex.SEMANTIC for r in results)


async def test_semantic_search_by_vector_and_min_score(corpus: PostgresStorage[str, Any]) -> None:
    vector = await corpus.embedder.embed_query(CORPUS["tea"])
    results = await corpus.search(MemoryQuery(embedding=[float(x) for x in vector], min_score=0.99))
    assert [r.entry.key for r in results] == ["tea"]


async def test_search_results_run_as_tasks_and_only_when_used(
    corpus: PostgresStorage[str, Any],
) -> None:
    def searches() -> int:
        stats = corpus.metrics.operations.get("search")
        return stats.count if stats else 0

    before = searches()
    unused = corpus.search(MemoryQuery(query=CORPUS["tea"], limit=1))
    assert searches() == before  # nothing ran yet
    unused.close()

    task = asyncio.create_task(corpus.search(MemoryQuery(query=CORPUS["tea"], limit=1)))
    similar_task = asyncio.create_task(corpus.similar("tea", limit=1))
    hits, neighbours = await asyncio.gather(task, similar_task)
    assert [hit.entry.key for hit in hits] == ["tea"]
    assert len(neighbours) == 1 and neighbours[0].entry.key != "tea"
    assert searches() == before + 1

    slow = asyncio.create_task(corpus.search(MemoryQuery(query=CORPUS["coffee"])))
    await asyncio.sleep(0)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert [
        h.entry.key async for h in corpus.search(MemoryQuery(query=CORPUS["coffee"], limit=1))
    ] == ["coffee"]


async def test_iterating_awaited_results_does_not_search_again(
    corpus: PostgresStorage[str, Any],
) -> None:
    def searches() -> int:
        return corpus.metrics.operations["search"].count

    results = corpus.search(MemoryQuery(query=CORPUS["tea"], limit=2))
    listed = await results
    before = searches()
    assert [hit async for hit in results] == listed
    assert searches() == before


async def test_contextual_search_uses_full_text_with_stemming(
    corpus: PostgresStorage[str, Any],
) -> None:
    results = await corpus.search(
        MemoryQuery(query="refund receipts", index_type=MemoryIndex.CONTEXTUAL)
    )
    assert [r.entry.key for r in results] == ["refund"]
    assert 0.5 < results[0].score <= 1.0


async def test_a_load_newer_than_the_term_statistics_is_found(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    """Right after a bulk load the background recount has not run: none of the load's words
    are counted yet, so each reads as rare. The memory holding every word of the question is
    found although one of them is in every memory (on a cluster the uncounted words were
    probed together under one cap, and the cap cut it off)."""
    await storage.store_many((f"k{n}", f"record {n}") for n in range(300))
    await storage.refresh_term_statistics()
    # The statistics as they stood before the load: nothing counted.
    schema, table = storage.config.schema_name, storage.config.table
    await raw_conn.execute(f'DELETE FROM "{schema}"."{table}_term_stats"')
    await raw_conn.execute(
        f'UPDATE "{schema}"."{table}_term_totals" SET documents = 0, avg_length = 0'
    )
    hits = await storage.search(
        MemoryQuery(query="record 123", index_type=MemoryIndex.CONTEXTUAL, limit=3)
    )
    assert hits[0].entry.key == "k123"


async def test_words_newer_than_the_term_statistics_still_rank_the_fullest_match_first(
    storage: PostgresStorage[str, Any],
) -> None:
    """Two memories written after the last count hold words it does not know: both passed
    the best score the known words allow, both scored 1, and the key decided."""
    await storage.store_many((f"old{n}", f"alpha beta note {n}") for n in range(40))
    await storage.refresh_term_statistics()
    # Two writes of forty: too few to start a recount.
    await storage.store("a-partial", "alpha beta zeta")
    await storage.store("b-whole", "alpha beta zeta omega")
    hits = await storage.search(
        MemoryQuery(query="alpha beta zeta omega", index_type=MemoryIndex.CONTEXTUAL, limit=3)
    )
    assert [hit.entry.key for hit in hits[:2]] == ["b-whole", "a-partial"]
    assert hits[0].score > hits[1].score


async def test_contextual_search_finds_misspelled_words_ranked_below_exact_ones(
    corpus: PostgresStorage[str, Any],
) -> None:
    fuzzy = await corpus.search(
        MemoryQuery(query="Patagnia hikng", index_type=MemoryIndex.CONTEXTUAL)
    )
    assert [r.entry.key for r in fuzzy] == ["hiking"]
    assert 0 < fuzzy[0].score <= 0.5
    unrelated = await corpus.search(
        MemoryQuery(query="xylophone quartet", index_type=MemoryIndex.CONTEXTUAL)
    )
    assert unrelated == []


async def test_hybrid_fuses_both_rankings_in_the_database(
    corpus: PostgresStorage[str, Any],
) -> None:
    results = await corpus.search(
        MemoryQuery(query="green tea afternoon", index_type=MemoryIndex.HYBRID, limit=5)
    )
    top = results[0]
    assert top.entry.key == "tea"
    # First in both lists: each side counts by how sure it is (its cosine; the square of the
    # share of the query's term weight it holds, here all of it).
    assert top.semantic_score is not None and top.contextual_score is not None
    assert top.score == pytest.approx((top.semantic_score + 1.0) / 2)
    others = results[1:]
    assert all(0 <= r.score < top.score for r in others)  # 0: no evidence either way
    # Memories found by meaning only have no word score.
    assert any(r.contextual_score is None for r in others)


async def test_an_owners_longest_searches_stay_prepared_on_the_connection(
    make_config: Any,
) -> None:
    # asyncpg keeps a statement prepared only up to a size: an owner's hybrid search was
    # longer than its default, and was prepared and parsed again on every call.
    config = make_config(min_size=1, max_size=1)
    ana = {"scope": MemoryScope.USER, "scope_id": "ana"}
    misspelt = "grene tea aftrenoon wiht Ana in Lisbn becuase of hte meetnig"
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store_many(CORPUS.items(), **ana)
        await store.store("long", "a note", passages=["a passage", "another"], **ana)
        for mode in (MemoryIndex.HYBRID, MemoryIndex.CONTEXTUAL):
            for _ in range(2):
                await store.search(
                    MemoryQuery(query=misspelt, index_type=mode, filter={"a": 1}, **ana)
                )
        async with store.database.pool.acquire() as conn:
            prepared = await conn.fetch(
                "SELECT statement FROM pg_prepared_statements WHERE statement LIKE $1",
                "%contextual%",
            )
    lengths = sorted(len(row["statement"].encode()) for row in prepared)
    # Both searches' statements are kept, the hybrid one (with passages, misspellings and a
    # filter) longer than asyncpg's default bound.
    asyncpg_default = 15 * 1024
    assert len(lengths) >= 2 and asyncpg_default < lengths[-1] < CACHEABLE_STATEMENT_BYTES


async def test_word_searches_plan_once_and_every_other_statement_for_its_values(
    make_config: Any,
) -> None:
    # A word search's plan does not depend on its values and costs more to make than to run:
    # its session plans generically. Every other statement on the same connection (a
    # vector search above all, whose plan depends on the owner's size) plans for its
    # values, whatever ran there before.
    config = make_config(min_size=1, max_size=1)
    mode = Query("SELECT current_setting('plan_cache_mode')")

    async def session_mode(store: PostgresStorage[str, Any]) -> str:
        async with store.database.pool.acquire() as conn:  # the pool's one connection
            return str(await conn.fetchval(mode.sql))

    once = PlannedOnce(lambda session: session.fetchval(mode))
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        database = store.database
        assert await database.fetchval("test", mode) == "force_custom_plan"
        assert await database.run("test", once) == "force_generic_plan"
        assert await database.run("test", once) == "force_generic_plan"
        assert await database.fetchval("test", mode) == "force_custom_plan"
        await store.store("tea", "green tea in the afternoon", scope="user", scope_id="u1")
        words = MemoryQuery(query="green tea", index_type=MemoryIndex.CONTEXTUAL)
        assert [r.entry.key for r in await store.search(words)] == ["tea"]
        assert await session_mode(store) == "force_generic_plan"
        meaning = MemoryQuery(query="green tea", index_type=MemoryIndex.SEMANTIC)
        assert [r.entry.key for r in await store.search(meaning)] == ["tea"]
        assert await session_mode(store) == "force_custom_plan"
        await store.search(words)
        await store.store("coffee", "black coffee", scope="user", scope_id="u1")
        assert await session_mode(store) == "force_custom_plan"


def _unit(*pairs: tuple[int, float]) -> list[float]:
    """A 64-d vector with the given (index, value) parts, the rest zero, of length 1."""
    vector = np.zeros(64)
    for index, value in pairs:
        vector[index] = value
    return (vector / np.linalg.norm(vector)).tolist()


async def test_hybrid_gives_no_word_vote_to_a_memory_holding_under_half_the_question(
    storage: PostgresStorage[str, Any],
) -> None:
    # Four equally rare words. The decoy holds one of them (a quarter of the term weight)
    # and embeds a little farther than the answer, which holds none: a paraphrase's answer
    # and the memory it happens to share a word with. The holder holds three (three
    # quarters) and embeds farther still: what the question names outweighs a closer
    # meaning.
    question = "zorblat quintex mervane holdrup"
    await storage.store_many(
        [
            {"key": "answer", "value": "a paraphrase", "embedding": _unit((0, 0.8), (1, 0.6))},
            {"key": "decoy", "value": "holdrup note", "embedding": _unit((0, 0.78), (2, 0.63))},
            {
                "key": "holder",
                "value": "zorblat quintex mervane",
                "embedding": _unit((0, 0.7), (3, 0.71)),
            },
            *(
                {"key": f"filler{n}", "value": f"filler {n}", "embedding": _unit((10 + n, 1.0))}
                for n in range(20)
            ),
        ]
    )
    await storage.refresh_term_statistics()
    results = await storage.search(
        MemoryQuery(
            query=question, embedding=_unit((0, 1.0)), index_type=MemoryIndex.HYBRID, limit=3
        )
    )
    assert [r.entry.key for r in results] == ["holder", "answer", "decoy"]
    decoy = results[2]
    # The decoy's words still score (shown), they only do not vote.
    assert decoy.contextual_score is not None and decoy.semantic_score is not None
    semantic = await storage.search(
        MemoryQuery(embedding=_unit((0, 1.0)), index_type=MemoryIndex.SEMANTIC, limit=3)
    )
    assert [r.entry.key for r in semantic] == ["answer", "decoy", "holder"]


async def test_all_words_hybrid_is_plain_rank_fusion(make_config: Any) -> None:
    config = make_config(contextual_match="all")
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store_many(CORPUS.items())
        results = await store.search(
            MemoryQuery(query="green tea afternoon", index_type=MemoryIndex.HYBRID, limit=5)
        )
        assert results[0].entry.key == "tea"
        assert results[0].score == pytest.approx(1.0)  # first in both lists
        assert all(r.contextual_score is None for r in results[1:])


async def test_temporal_search_returns_newest_first(storage: PostgresStorage[str, Any]) -> None:
    for key in ("old", "middle", "new"):
        await storage.store(key, f"{key} event")
    results = await storage.search(MemoryQuery(index_type=MemoryIndex.TEMPORAL))
    assert [r.entry.key for r in results] == ["new", "middle", "old"]
    assert all(0 < r.score <= 1 for r in results)
    only = await storage.search(MemoryQuery(index_type=MemoryIndex.TEMPORAL, query="middle"))
    assert [r.entry.key for r in only] == ["middle"]


async def test_temporal_search_of_a_question_finds_what_its_words_find(
    storage: PostgresStorage[str, Any],
) -> None:
    ana = {"scope": MemoryScope.USER, "scope_id": "ana"}
    await storage.store("allergy", "Ana is allergic to peanuts", **ana)
    await storage.store("diet", "Ana avoids dairy food since May", **ana)
    await storage.store("weather", "It rained all week", **ana)
    await storage.store("latest", "Ana booked a table for Friday", **ana)
    question = "what food should I avoid for Ana"
    found = await storage.search(
        MemoryQuery(query=question, index_type=MemoryIndex.TEMPORAL, **ana)
    )
    # Every memory the question's words find, newest first; none of the others.
    assert [r.entry.key for r in found] == ["latest", "diet", "allergy"]
    contextual = await storage.search(
        MemoryQuery(query=question, index_type=MemoryIndex.CONTEXTUAL, **ana)
    )
    assert {r.entry.key for r in contextual} == {r.entry.key for r in found}


async def test_paging_with_offset_is_consistent(storage: PostgresStorage[str, Any]) -> None:
    await storage.store_many((f"k{i:02d}", f"note number {i}") for i in range(30))
    for index in (MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID):
        everything = await storage.search(MemoryQuery(query="note", index_type=index, limit=30))
        pages = []
        for offset in range(0, 30, 7):
            pages += await storage.search(
                MemoryQuery(query="note", index_type=index, limit=7, offset=offset)
            )
        assert [r.entry.key for r in pages] == [r.entry.key for r in everything], index


async def test_filtered_search_fills_the_limit(storage: PostgresStorage[str, Any]) -> None:
    # 1 in 50 rows passes the filter: a plain HNSW scan (ef_search candidates, then filter)
    # would return too few; iterative scans keep going until `limit` rows pass.
    await storage.store_many(
        {"key": f"k{i}", "value": f"shared words item {i}", "metadata": {"bucket": i % 50}}
        for i in range(2_000)
    )
    results = await storage.search(
        MemoryQuery(query="shared words", filter={"bucket": 7}, limit=30)
    )
    assert len(results) == 30
    assert all(r.entry.metadata["bucket"] == 7 for r in results)


async def test_types_and_time_bounds_restrict_search(storage: PostgresStorage[str, Any]) -> None:
    first = await storage.store("a", "alpha memory", type=MemoryType.EPISODIC)
    await storage.store("b", "alpha memory too", type=MemoryType.PROCEDURAL)
    results = await storage.search(
        MemoryQuery(query="alpha", index_type=MemoryIndex.CONTEXTUAL, types={MemoryType.EPISODIC})
    )
    assert [r.entry.key for r in results] == ["a"]
    later = await storage.search(
        MemoryQuery(
            query="alpha", index_type=MemoryIndex.CONTEXTUAL, created_after=first.updated_at
        )
    )
    assert {r.entry.key for r in later} <= {"a", "b"} and "b" in {r.entry.key for r in later}


async def test_entries_without_an_index_are_not_found_by_it(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("words", "unique zebra text", indices={MemoryIndex.CONTEXTUAL})
    await storage.store("meaning", "unique zebra text", indices={MemoryIndex.SEMANTIC})
    semantic = await storage.search(MemoryQuery(query="unique zebra text"))
    contextual = await storage.search(MemoryQuery(query="zebra", index_type=MemoryIndex.CONTEXTUAL))
    assert [r.entry.key for r in semantic] == ["meaning"]
    assert [r.entry.key for r in contextual] == ["words"]


async def test_similar_uses_the_stored_vector_and_excludes_itself(
    corpus: PostgresStorage[str, Any],
) -> None:
    queries_before = len(getattr(corpus.embedder, "queries", []))
    results = await corpus.similar("coffee", limit=10)
    assert "coffee" not in [r.entry.key for r in results]
    assert len(results) == len(CORPUS) - 1
    assert len(getattr(corpus.embedder, "queries", [])) == queries_before
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)


async def test_similar_errors(storage: PostgresStorage[str, Any]) -> None:
    with pytest.raises(MemoryNotFoundError):
        await storage.similar("missing")
    await storage.store("plain", "no vector here", indices={MemoryIndex.CONTEXTUAL})
    with pytest.raises(MemoryIndexError, match="SEMANTIC"):
        await storage.similar("plain")
    with pytest.raises(MemoryValidationError):
        await storage.similar("plain", limit=0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"query": ""}, "empty"),
        ({"query": "   "}, "empty"),
        ({}, "needs `query`"),
        ({"query": "x", "limit": 0}, "limit"),
        ({"query": "x", "limit": 10_000_000}, "limit"),
        ({"query": "x", "offset": -1}, "offset"),
        ({"query": "x", "min_score": 1.5}, "outside"),
        ({"query": "x", "min_score": -0.5, "index_type": MemoryIndex.CONTEXTUAL}, "outside"),
        ({"query": "x", "scope_id": "u1"}, "scope_id needs a scope"),
        ({"query": "x", "unknown": 1}, "unknown"),
        ({"index_type": MemoryIndex.HYBRID}, "needs `query`"),
    ],
)
def test_invalid_queries_are_rejected_at_construction(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(MemoryValidationError, match=message):
        MemoryQuery(**fields)


async def test_query_embedding_is_checked(storage: PostgresStorage[str, Any]) -> None:
    from pepperpy_pg_memory import DimensionMismatchError

    with pytest.raises(DimensionMismatchError):
        await storage.search(MemoryQuery(embedding=[1.0, 0.0]))
    with pytest.raises(MemoryValidationError, match="NaN"):
        await storage.search(MemoryQuery(embedding=[float("nan")] * 64))
    with pytest.raises(MemoryValidationError, match="all zeros"):
        await storage.search(MemoryQuery(embedding=[0.0] * 64))


async def test_seed_search_loop(storage: PostgresStorage[str, Any]) -> None:
    await storage.store(
        key="doc-1",
        value={"content": "Example document"},
        type=MemoryType.SHORT_TERM,
        scope=MemoryScope.SESSION,
        indices={MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL},
    )
    query = MemoryQuery(
        query="example document", index_type=MemoryIndex.SEMANTIC, min_score=0.5, limit=10
    )
    seen = [(result.score, result.entry.key) async for result in storage.search(query)]
    assert [key for _, key in seen] == ["doc-1"]
    similar = [result async for result in storage.similar("doc-1", limit=5)]
    assert similar == []


@pytest.mark.parametrize("text", ["a", "?", "$1", "!!", "the"])
async def test_queries_without_searchable_words_return_nothing(
    corpus: PostgresStorage[str, Any], text: str
) -> None:
    for index in (MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID):
        results = await corpus.search(MemoryQuery(query=text, index_type=index))
        assert all(r.contextual_score is None for r in results)


async def test_filtered_searches_walk_the_graph_further(make_config: Any) -> None:
    # With ef_search 1 and no iterative scan the graph walk yields one candidate (distinct
    # random vectors: no ties); a filtered search walks with hnsw_ef_search_filtered instead.
    import numpy as np

    narrow = {"hnsw_ef_search": 1, "hnsw_iterative_scan": "off"}
    config = make_config(**narrow, hnsw_ef_search_filtered=400)
    vectors = np.random.default_rng(7).normal(size=(3001, 64)).astype(np.float32)
    rows = [
        {
            "key": f"k{i}",
            "value": f"note {i}",
            "metadata": {"even": i % 2 == 0},
            "embedding": vectors[i].tolist(),
        }
        for i in range(3000)
    ]
    query = MemoryQuery(embedding=vectors[3000].tolist(), limit=5, filter={"even": True})
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store_many(rows)
        async with store.database.pool.acquire() as conn:  # the planner must see the table
            await conn.execute(f"ANALYZE {store.layout.qualified_table}")
        filtered = await store.search(query)
        assert len(filtered) == 5 and all(r.entry.metadata["even"] for r in filtered)
        # similar() walks the same graph from a stored vector, with the same rule.
        neighbours = await store.similar("k1", limit=5, filter={"even": True})
        assert len(neighbours) == 5 and all(r.entry.metadata["even"] for r in neighbours)
        unfiltered = await store.search(MemoryQuery(embedding=vectors[3000].tolist(), limit=5))
        assert len(unfiltered) == 1  # ef_search 1 still holds for unfiltered searches
    same = make_config(**narrow, hnsw_ef_search_filtered=1, table=config.table)
    async with PostgresStorage[str, Any](same, HashingEmbedder(64)) as store:
        assert len(await store.search(query)) <= 1  # and the setting is what made the change
        assert len(await store.similar("k1", limit=5, filter={"even": True})) <= 1


async def test_results_come_best_first_when_the_graph_walk_returns_them_out_of_order(
    make_config: Any,
) -> None:
    # Relaxed-order iterative scans (the default) return rows roughly by distance once a walk
    # needs more than one round (here: ef_search 10, 100 results). The statements sort them
    # again; PostgreSQL 17+ must not take the walk's order for granted when they do.
    import numpy as np

    config = make_config(hnsw_ef_search=10, hnsw_ef_search_filtered=10)
    vectors = np.random.default_rng(11).normal(size=(4020, 32)).astype(np.float32)
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store_many(
            {"key": f"k{i}", "value": f"note {i}", "embedding": vectors[i].tolist()}
            for i in range(4000)
        )
        async with store.database.pool.acquire() as conn:  # the planner must see the table
            await conn.execute(f"ANALYZE {store.layout.qualified_table}")

        def best_first(results: Any) -> bool:
            scores = [r.score for r in results]
            return all(a >= b for a, b in zip(scores, scores[1:], strict=False))

        for probe in vectors[4000:]:
            query = MemoryQuery(embedding=probe.tolist(), limit=100)
            page = await store.search(query)
            assert len(page) == 100 and best_first(page)
            # Offset pages line up with the one long page.
            second = await store.search(query.model_copy(update={"limit": 50, "offset": 50}))
            assert [r.entry.key for r in second] == [r.entry.key for r in page[50:]]
        assert best_first(await store.similar("k1", limit=100))
        hybrid = MemoryQuery(query="note", embedding=vectors[4000].tolist(), index_type="hybrid")
        assert best_first(await store.search(hybrid.model_copy(update={"limit": 100})))


@pytest.mark.parametrize("distance", ["l2", "inner_product"])
async def test_a_table_compares_vectors_by_its_own_distance(
    make_config: Any, distance: str
) -> None:
    """Every vector path — semantic, hybrid, ranked, similar, deduplication — runs on the
    table's operator (its index's), and scores follow LangGraph's conventions."""
    config = make_config(distance=distance)
    embedder = HashingEmbedder(64)
    async with PostgresStorage[str, Any](config, embedder) as store:
        await store.store_many([{"key": key, "value": text} for key, text in CORPUS.items()])
        query = "green tea in the afternoon"
        found = await store.search(MemoryQuery(query=query, limit=3))
        assert found[0].entry.key == "tea"
        nearest = await embedder.embed_query(CORPUS["tea"])
        asked = await embedder.embed_query(query)
        if distance == "l2":
            expected = -float(np.linalg.norm(nearest - asked))
        else:
            expected = float(nearest @ asked)
        assert found[0].score == pytest.approx(expected, abs=1e-4)
        hybrid = await store.search(
            MemoryQuery(query=query, index_type=MemoryIndex.HYBRID, limit=3)
        )
        assert hybrid[0].entry.key == "tea"
        ranked = await store.search(MemoryQuery(query=query, limit=3, ranking=Ranking()))
        assert ranked[0].entry.key == "tea" and 0 < ranked[0].score <= 1
        assert (await store.similar("coffee", 1))[0].entry.key in CORPUS
        twin = await store.store("tea-again", CORPUS["tea"], dedupe=True)
        assert twin.deduplicated and twin.key == "tea"
    with pytest.raises(MemoryConfigurationError, match=f"compares vectors by '{distance}'"):
        async with PostgresStorage[str, Any](make_config(table=config.table), embedder):
            pass


async def test_an_owners_search_sorts_addresses_and_reads_back_whole_memories(
    storage: PostgresStorage[str, Any],
) -> None:
    """Within one owner the planner may read every row of the owner and sort them by
    distance: the sort carries each row's address and distance only, and the nearest are
    read back whole (with their vectors when asked) in the exact order."""
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(120, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await storage.store_many(
        [
            {"key": f"k{i}", "value": {"n": i}, "text": f"note {i}", "embedding": vectors[i]}
            for i in range(120)
        ],
        scope=MemoryScope.USER,
        scope_id="ana",
    )
    query = rng.normal(size=64).astype(np.float32)
    query /= np.linalg.norm(query)
    exact = [f"k{i}" for i in np.argsort(-(vectors @ query))[:5]]
    asked = MemoryQuery(
        embedding=query.tolist(), limit=5, scope=MemoryScope.USER, scope_id="ana",
        include_embedding=True,
    )  # fmt: skip
    found = await storage.search(asked)
    assert [hit.entry.key for hit in found] == exact
    for hit in found:
        number = int(hit.entry.key[1:])
        assert hit.entry.value == {"n": number} and hit.entry.text == f"note {number}"
        assert hit.score == pytest.approx(float(vectors[number] @ query), abs=1e-5)
        assert np.allclose(hit.entry.embedding, vectors[number], atol=1e-6)
    if storage.layout.distributed:
        return  # (a row's address names a row on one shard only: a cluster reads as before)
    started = storage._ready
    statement = started.searches.semantic_search(
        query, started.restriction(MemoryScope.USER, "ana"), Page(5), passages=False
    )
    rows = await storage.database.fetch_with_settings(
        "explain",
        Query("EXPLAIN (FORMAT JSON) " + statement.sql, statement.args),
        {"enable_indexscan": "off", "enable_bitmapscan": "off"},  # the exact scan and sort
    )
    nodes = plan_nodes(rows[0][0])
    sorts = [node for node in nodes if node["Node Type"] == "Sort"]
    assert "Tid Scan" in {node["Node Type"] for node in nodes}
    assert sorts and min(node["Plan Width"] for node in sorts) <= 16
