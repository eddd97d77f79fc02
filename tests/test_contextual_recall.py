"""Contextual recall for questions and identifiers: BM25 over any of the query's terms,
identifier-aware terms, per-tenant term statistics, and the online backfill that gives
upgraded tables their terms."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from test_identity_upgrade import _load_release_0_1

from helpers import generic_plan, plan_nodes
from langchain_pepperpy import PepperpyMemoryRetriever
from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory import backfill as backfills
from pepperpy_pg_memory.schema.layout import terms_function
from pepperpy_pg_memory.search_sql import CONTEXTUAL_CANDIDATES, Page, fuzzy_words, split_query

ORDERS = {
    "shipped": "Order A-77812 shipped on Monday via DHL.",
    "cancelled": "Order A-77813 was cancelled on Tuesday and refunded.",
    "server": "db-prod-08 runs PostgreSQL 16 in the Frankfurt rack.",
    "twin-server": "db-prod-09 was decommissioned last quarter.",
    "flight": "Diego flies TP1352 to Lisbon on Friday morning.",
    "sku": "SKU KX-221 is the blue ceramic mug, 12 euros.",
}


async def _contextual(store: PostgresStorage[str, Any], query: str, limit: int = 5) -> list[Any]:
    return list(
        await store.search(MemoryQuery(query=query, index_type=MemoryIndex.CONTEXTUAL, limit=limit))
    )


async def _keys(store: PostgresStorage[str, Any], query: str, mode: MemoryIndex) -> list[str]:
    results = await store.search(MemoryQuery(query=query, index_type=mode, limit=5))
    return [result.entry.key for result in results]


async def _owner_search_planned(
    store: PostgresStorage[str, Any], question: str, owner: str, limit: int, generic: bool
) -> tuple[list[tuple[str, float]], list[dict[str, Any]]]:
    """An owner's CONTEXTUAL statement run directly: its (key, score) rows and the nodes of
    its plan (EXPLAIN ANALYZE; ``generic``: planned once for any owner, as the store runs it)."""
    restriction = store._ready.restriction(MemoryScope.USER, owner)
    statement = store._ready.searches.contextual_search(question, restriction, Page(limit))
    async with store.database.pool.acquire() as conn:  # with the store's settings
        if generic:
            plan = await generic_plan(conn, statement.sql, statement.args)
        else:
            plan = await conn.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.sql, *statement.args
            )
        rows = await conn.fetch(statement.sql, *statement.args)
    return [(row["key"], row["score"]) for row in rows], plan_nodes(plan)


@pytest.fixture
async def orders(storage: PostgresStorage[str, Any]) -> PostgresStorage[str, Any]:
    await storage.store_many([{"key": k, "value": v} for k, v in ORDERS.items()])
    await storage.refresh_term_statistics()
    return storage


async def test_identifiers_become_whole_terms_and_their_parts(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    await storage.store("k", "Order A-77812 on db-prod-08, flight TP1352, version v3.11")
    terms = await raw_conn.fetchval(
        f"SELECT tsvector_to_array(terms) FROM {storage.layout.qualified_table}"
    )
    for term in ("a-77812", "77812", "db-prod-08", "db", "prod", "08", "tp1352", "tp", "1352"):
        assert term in terms
    assert "v3.11" in terms and "11" in terms
    # The configuration's own lexemes are kept: stemmed words, and its stop words dropped.
    assert "order" in terms and "on" not in terms


async def test_a_question_with_words_its_memory_lacks_finds_it(
    orders: PostgresStorage[str, Any],
) -> None:
    results = await _contextual(orders, "has A-77812 been sent yet?")
    assert results[0].entry.key == "shipped"
    # The near-miss code is not mistaken for it.
    assert all(r.entry.key != "cancelled" or r.score < results[0].score for r in results)
    assert (await _contextual(orders, "where is db-prod-08 hosted?"))[0].entry.key == "server"
    assert (await _contextual(orders, "when does Diego take tp1352?"))[0].entry.key == "flight"
    assert (await _contextual(orders, "how much is kx-221"))[0].entry.key == "sku"


async def test_all_words_matching_is_kept_as_an_option(make_config: Any) -> None:
    config = make_config(contextual_match="all")
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store_many([{"key": k, "value": v} for k, v in ORDERS.items()])
        # Every word must appear: the question's extra words leave nothing.
        assert await _contextual(store, "has A-77812 been sent yet?") == []
        assert (await _contextual(store, "Frankfurt rack"))[0].entry.key == "server"


async def test_rare_terms_outweigh_common_ones(storage: PostgresStorage[str, Any]) -> None:
    await storage.store_many(
        [{"key": f"n{i}", "value": f"meeting note {i} about the weekly meeting"} for i in range(30)]
        + [{"key": "rare", "value": "Zanzibar trip planned"}]
    )
    await storage.refresh_term_statistics()
    results = await _contextual(storage, "meeting Zanzibar")
    assert results[0].entry.key == "rare"
    # A word every memory holds still matches, below the rare one.
    assert len(results) == 5 and all(r.score < results[0].score for r in results[1:])


async def test_a_term_newer_than_the_statistics_is_not_crowded_out(
    storage: PostgresStorage[str, Any],
) -> None:
    # The statistics are counted before a hundred "ticket-…" memories arrive (too few writes
    # to recount), so every term of the query is unknown to them, "ticket" included, which as
    # many memories as the candidate budget now hold. The new memory's own number must find it.
    await storage.store_many([{"key": f"o{i}", "value": f"other note {i}"} for i in range(500)])
    await storage.refresh_term_statistics()
    await storage.store_many(
        [
            {"key": f"t{i}", "value": f"ticket-{1000 + i} closed"}
            for i in range(CONTEXTUAL_CANDIDATES)
        ]
    )
    await storage.store("new", "ticket-98765 opened by Ana")
    results = await _contextual(storage, "ticket-98765")
    assert results[0].entry.key == "new"
    # Hybrid search takes its contextual candidates from the same probes.
    hybrid = await storage.search(
        MemoryQuery(query="ticket-98765", index_type=MemoryIndex.HYBRID, limit=3)
    )
    assert hybrid[0].entry.key == "new"


async def test_scores_keep_their_contract(orders: PostgresStorage[str, Any]) -> None:
    words = await _contextual(orders, "was A-77812 shipped?")
    assert words and all(0.5 < r.score <= 1.0 for r in words)
    assert words == sorted(words, key=lambda r: -r.score)
    # A misspelling no memory holds falls back to trigrams, scored at most 0.5.
    fuzzy = await _contextual(orders, "Frankfrut")
    assert fuzzy[0].entry.key == "server" and 0 < fuzzy[0].score <= 0.5


async def test_phrases_and_exclusions_keep_their_meaning(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store_many(
        [
            {"key": "tea", "value": "Ana drinks green tea every morning"},
            {"key": "green", "value": "Bruno paints the tea room green"},
            {"key": "coffee", "value": "Ana drinks black coffee"},
        ]
    )
    await storage.refresh_term_statistics()
    phrase = [r.entry.key for r in await _contextual(storage, '"green tea"')]
    assert phrase == ["tea"]
    excluded = [r.entry.key for r in await _contextual(storage, "Ana drinks -coffee")]
    assert excluded == ["tea"]
    # Exclusions alone: every memory without the word.
    only = {r.entry.key for r in await _contextual(storage, "-coffee")}
    assert only == {"tea", "green"}
    assert split_query('pizza -pineapple "New York"') == (
        'pizza   "New York"',
        '"New York" -pineapple',
    )


async def test_changed_text_changes_the_terms(orders: PostgresStorage[str, Any]) -> None:
    await orders.store("shipped", "Order B-10001 shipped on Monday via DHL.")
    assert [r.entry.key for r in await _contextual(orders, "B-10001")] == ["shipped"]
    assert "shipped" not in [r.entry.key for r in await _contextual(orders, "A-77812")]


async def test_hybrid_puts_the_asked_for_identifier_first(
    orders: PostgresStorage[str, Any],
) -> None:
    for question, key in (
        ("has A-77812 been sent yet?", "shipped"),
        ("is A-77813 still coming?", "cancelled"),
        ("what is db-prod-09 used for?", "twin-server"),
    ):
        assert (await _keys(orders, question, MemoryIndex.HYBRID))[0] == key


async def test_a_question_of_common_words_fetches_a_bounded_candidate_set(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store_many(
        [
            {"key": f"k{i}", "value": f"Ana likes green tea and black coffee, note {i}"}
            for i in range(1_500)
        ]
    )
    await storage.refresh_term_statistics()
    statement = storage._ready.searches.contextual_search(
        "does Ana like tea or coffee", storage._ready.restriction(None, None, None, None), Page(10)
    )
    async with storage.database.pool.acquire() as conn:  # with the store's settings
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.sql, *statement.args
        )
    nodes = plan_nodes(plan)
    table = storage.layout.table
    scans = [n for n in nodes if n.get("Relation Name") == table]
    executed = [n for n in scans if n["Actual Loops"] > 0]
    assert executed and not any(n["Node Type"] == "Seq Scan" for n in executed)
    # Each candidate step stops at its budget: far fewer rows than the table holds.
    fetched = sum(n["Actual Rows"] * n["Actual Loops"] for n in executed)
    assert fetched <= 3 * CONTEXTUAL_CANDIDATES + 10
    assert len(await _contextual(storage, "does Ana like tea or coffee", limit=10)) == 10


async def test_a_small_owner_is_searched_without_other_owners_terms(
    storage: PostgresStorage[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another user's 1,500 memories hold the very words Ana's 20 do: through the terms'
    # index, a search within Ana would read all of them and drop them.
    crowd = {"scope": MemoryScope.USER, "scope_id": "bruno"}
    ana = {"scope": MemoryScope.USER, "scope_id": "ana"}
    await storage.store_many(
        [
            {"key": f"b{i}", "value": f"green tea and black coffee, note {i}", **crowd}
            for i in range(1_500)
        ]
        + [{"key": f"a{i}", "value": f"Ana likes green tea, entry {i}", **ana} for i in range(19)]
        + [{"key": "coffee", "value": "Ana drinks black coffee on Mondays", **ana}]
    )
    await storage.refresh_term_statistics()

    async def searched() -> tuple[list[tuple[str, float]], int]:
        rows, nodes = await _owner_search_planned(storage, "black coffee", "ana", 5, False)
        index = f"{storage.layout.table}_terms_idx"
        read = sum(
            n["Actual Rows"] * n["Actual Loops"] for n in nodes if n.get("Index Name") == index
        )
        return rows, read

    owned, read_owned = await searched()
    assert owned[0][0] == "coffee"
    assert read_owned == 0  # Ana's own memories were read, not the index of everyone's terms
    # The same answer through the index (as for an owner too large for the shortcut).
    monkeypatch.setattr("pepperpy_pg_memory.search_sql.SMALL_OWNER_MEMORIES", 0)
    indexed, read_indexed = await searched()
    assert indexed == owned
    assert read_indexed > 1_500


async def test_a_large_owners_search_looks_up_only_the_questions_terms(
    storage: PostgresStorage[str, Any],
) -> None:
    # An owner of 3,000 words among small owners: a join of the question's terms to the
    # owner's statistics, planned for an owner of average size, read all 3,000 of them.
    big = {"scope": MemoryScope.USER, "scope_id": "big"}
    await storage.store_many(
        [{"key": f"w{i}", "value": f"note about thing{i}", **big} for i in range(3_000)]
        + [
            {"key": f"s{i}", "value": f"small note {i}", "scope": "user", "scope_id": f"u{i}"}
            for i in range(200)
        ]
    )
    await storage.refresh_term_statistics()
    question = "note about thing17 and thing42"
    statement = storage._ready.searches.contextual_search(
        question, storage._ready.restriction(MemoryScope.USER, "big"), Page(5)
    )
    async with storage.database.pool.acquire() as conn:
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.sql, *statement.args
        )
        # The question's terms: its words, and its identifiers whole and by parts.
        terms = await conn.fetchval(
            f"SELECT cardinality(tsvector_to_array({terms_function(storage.layout.schema)}("
            "'english'::regconfig, $1)))",
            question,
        )
    statistics = f"{storage.layout.table}_owner_terms"
    read = sum(
        n["Actual Rows"] * n["Actual Loops"]
        for n in plan_nodes(plan)
        if n.get("Relation Name") == statistics
    )
    # Each of its terms, and (the words filling fewer places than asked) each of its words
    # once more, asked whether it is a misspelling.
    assert 0 < read <= terms + len(fuzzy_words(question)) and terms < 10
    found = await storage.search(
        MemoryQuery(query=question, index_type=MemoryIndex.CONTEXTUAL, limit=2, **big)
    )
    assert {r.entry.key for r in found} == {"w17", "w42"}


BIG_OWNER = {"scope": MemoryScope.USER, "scope_id": "big"}


async def _with_a_large_owner(storage: PostgresStorage[str, Any], *others: dict[str, Any]) -> None:
    """An owner of 2,500 memories holding most of the table (beside ``others``), counted."""
    await storage.store_many(
        [
            {"key": f"w{i}", "value": f"note {i} about topic{i % 50}", **BIG_OWNER}
            for i in range(2_500)
        ]
        + list(others)
    )
    await storage.refresh_term_statistics()


async def _checked_on_what_an_index_finds(
    storage: PostgresStorage[str, Any], question: str, operator: str = ""
) -> tuple[list[tuple[str, float]], int]:
    """The large owner's ten best for ``question`` and how many scans of the table (those
    whose conditions use ``operator``) checked the owner as a condition no index serves."""
    rows, nodes = await _owner_search_planned(storage, question, "big", 10, True)
    checking = 0
    for n in nodes:
        checked = n.get("Filter", "") + n.get("Recheck Cond", "")
        scanned = n.get("Relation Name") == storage.layout.table and n["Actual Loops"]
        if scanned and "IS TRUE" in checked and operator in checked + n.get("Index Cond", ""):
            checking += 1
    return rows, checking


async def test_an_owner_holding_most_memories_is_checked_on_what_the_index_finds(
    storage: PostgresStorage[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Intersecting the terms' index with every row of an owner holding most of the table
    # (what a plan made for an owner of average size does) costs more than checking the
    # owner on the few rows the terms match: the probes through the index check it.
    await _with_a_large_owner(
        storage,
        *(
            {"key": f"s{i}", "value": f"note about topic{i}", "scope": "user", "scope_id": "small"}
            for i in range(100)
        ),
    )
    checked, checking = await _checked_on_what_an_index_finds(storage, "topic7 note")
    assert len(checked) == 10
    assert {key for key, _ in checked} <= {f"w{i}" for i in range(7, 2_500, 50)}
    assert checking > 0
    # An owner holding less of the table: the same answer, its rows intersected.
    monkeypatch.setattr("pepperpy_pg_memory.search_sql.LARGE_OWNER_BREAK_EVEN", 10**9)
    intersected, checking = await _checked_on_what_an_index_finds(storage, "topic7 note")
    assert intersected == checked and checking == 0


async def test_a_large_owners_misspelling_is_checked_on_what_the_trigram_index_finds(
    storage: PostgresStorage[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # When the words fill fewer places than asked, misspelt words are looked for by their
    # trigrams. A plan made for an owner of average size read every memory of the owner to
    # test them (125 ms for an owner of 50,000 among 350,000): for an owner holding much of
    # the table, the trigram index finds the candidates and the owner is checked on them.
    await _with_a_large_owner(
        storage,
        {"key": "lucas", "value": "Lucas is allergic to cashews", **BIG_OWNER},
        {"key": "noah", "value": "Noah is allergic to cashews", "scope": "user", "scope_id": "s"},
    )
    checked, checking = await _checked_on_what_an_index_finds(storage, "cashewz", "<%")
    assert [key for key, _ in checked] == ["lucas"] and 0 < checked[0][1] <= 0.5
    assert checking > 0
    # An owner holding less of the table: the same answer, from the owner's own rows.
    monkeypatch.setattr("pepperpy_pg_memory.search_sql.LARGE_OWNER_BREAK_EVEN", 10**9)
    from_owner, checking = await _checked_on_what_an_index_finds(storage, "cashewz", "<%")
    assert from_owner == checked and checking == 0


async def test_only_words_the_statistics_do_not_count_are_looked_up_as_misspellings(
    storage: PostgresStorage[str, Any],
) -> None:
    # Whether a word is a misspelling is asked of the full-text index only for words the
    # owner's term statistics do not count (within an owner of 50,000 the index's answer
    # cost 3-5 ms a word).
    await _with_a_large_owner(
        storage, {"key": "lucas", "value": "Lucas is allergic to cashews", **BIG_OWNER}
    )
    rows, nodes = await _owner_search_planned(storage, "Lucas cashewz", "big", 10, True)
    assert [key for key, _ in rows] == ["lucas"]
    looked_up = [
        n
        for n in nodes
        if n["Actual Loops"] and "plainto_tsquery" in n.get("Index Cond", "") + n.get("Filter", "")
    ]
    # "cashewz" only: "lucas" is counted.
    assert len(looked_up) == 1


async def test_term_statistics_are_kept_per_tenant(make_config: Any, pg_dsn: str) -> None:
    table = make_config().table

    def tenant_config(tenant: str) -> PostgresConfig:
        return make_config(table=table, tenant=tenant)  # type: ignore[no-any-return]

    async with (
        PostgresStorage[str, Any](tenant_config("acme"), HashingEmbedder(64)) as acme,
        PostgresStorage[str, Any](tenant_config("globex"), HashingEmbedder(64)) as globex,
    ):
        await globex.store_many(
            [
                {"key": "g1", "value": "Zanzibar supplier contract"},
                {"key": "g2", "value": "Lisbon office lease"},
            ]
        )
        await globex.refresh_term_statistics()
        before = (await _contextual(globex, "Zanzibar contract"))[0].score
        # Another tenant fills the table with the same words: globex's scores do not move.
        await acme.store_many(
            [{"key": f"a{i}", "value": f"Zanzibar contract {i}"} for i in range(50)]
        )
        await acme.refresh_term_statistics()
        await globex.refresh_term_statistics()
        assert (await _contextual(globex, "Zanzibar contract"))[0].score == before
        assert {r.entry.key for r in await _contextual(globex, "Zanzibar")} == {"g1"}


async def test_statistics_refresh_on_their_own_after_writes(
    storage: PostgresStorage[str, Any], raw_conn: asyncpg.Connection
) -> None:
    await storage.store_many([{"key": f"k{i}", "value": f"memory {i}"} for i in range(20)])
    await storage._term_stats.settle()
    totals = storage.layout.qualified_term_totals
    assert await raw_conn.fetchval(f"SELECT documents FROM {totals}") == 20
    await storage.store_many([{"key": f"j{i}", "value": f"more {i}"} for i in range(10)])
    await storage._term_stats.settle()
    assert await raw_conn.fetchval(f"SELECT documents FROM {totals}") == 30


async def _forget_terms(store: PostgresStorage[str, Any], raw_conn: asyncpg.Connection) -> None:
    """Put the table back as an upgrade leaves it: no terms, the backfill not run."""
    layout = store.layout
    await raw_conn.execute(f"UPDATE {layout.qualified_table} SET terms = NULL")
    await raw_conn.execute(
        f"UPDATE {layout.qualified_backfills} "
        "SET finished_at = NULL, position = NULL, rows_done = 0"
    )


async def test_the_backfill_resumes_where_it_stopped(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config(background_backfill=False)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store_many([{"key": f"k{i:02d}", "value": f"code X-{i}"} for i in range(25)])
        await _forget_terms(store, raw_conn)

        def stop_after_first_batch(done: int, total: int) -> None:
            raise KeyboardInterrupt  # as if the process were stopped

        with pytest.raises(KeyboardInterrupt):
            await backfills.run(
                store.database,
                store.layout,
                backfills.TERMS,
                "",
                batch_size=10,
                progress=stop_after_first_batch,
            )
    table = config.table
    filled = f'SELECT count(terms) FROM "{config.schema_name}"."{table}"'
    assert await raw_conn.fetchval(filled) == 10
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        seen: list[tuple[int, int]] = []
        assert await store.complete_backfills(progress=lambda d, t: seen.append((d, t))) == 15
        assert seen[-1] == (15, 15)
        assert await raw_conn.fetchval(filled) == 25
        assert await store.complete_backfills() == 0
        assert (await _contextual(store, "X-7"))[0].entry.key == "k07"


async def test_an_upgraded_table_is_searchable_before_and_after_its_backfill(
    pg_dsn: str, raw_conn: asyncpg.Connection
) -> None:
    schema = await _load_release_0_1(pg_dsn)
    config = PostgresConfig(dsn=pg_dsn, schema=schema, table="memories", background_backfill=False)
    table = f'"{schema}".memories'
    stamps = f"SELECT key, updated_at FROM {table} ORDER BY key"
    before = await raw_conn.fetch(stamps)
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        # Migrated without touching a row: the terms come later, online.
        assert await raw_conn.fetchval(f"SELECT count(terms) FROM {table}") == 0
        # Meanwhile their text answers, parsed when searched (schema 29 dropped the full-text
        # column that did): by any word, a phrase, every word, and a misspelling's check.
        hits = await _contextual(store, "peanuts")
        assert [h.entry.key for h in hits] == ["ana-allergy"]
        assert [h.entry.key for h in await _contextual(store, '"allergic to peanuts"')] == [
            "ana-allergy"
        ]
        assert await _contextual(store, '"peanuts allergic"') == []
        assert [h.entry.key for h in await _contextual(store, "peanutz")] == ["ana-allergy"]
        every_word = config.model_copy(update={"contextual_match": "all"})
        async with PostgresStorage[str, Any](every_word, HashingEmbedder(16)) as all_words:
            assert [h.entry.key for h in await _contextual(all_words, "office closes")] == [
                "global-fact"
            ]
            assert await _contextual(all_words, "office peanuts") == []
        contextual_rows = await raw_conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE indices @> ARRAY['contextual']"
        )
        # (and the marking of the release's chat messages and LangGraph items)
        adapter_rows = await raw_conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE metadata ? 'lg_namespace' "
            "OR metadata ->> 'kind' = 'chat_message'"
        )
        assert adapter_rows > 0
        assert await store.complete_backfills() == contextual_rows + adapter_rows
        assert (
            await raw_conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE indices @> ARRAY['contextual'] "
                "AND terms IS NULL"
            )
            == 0
        )
        # A backfill is not a change of the memory.
        assert [tuple(r) for r in await raw_conn.fetch(stamps)] == [tuple(r) for r in before]
        await store.refresh_term_statistics()
        hits = await _contextual(store, "what is Ana allergic to?")
        assert hits[0].entry.key == "ana-allergy"
    # Another process starting later finds the work done.
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        assert await store.complete_backfills() == 0
        assert not store.backfill_pending


async def test_start_backfills_in_the_background(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    config = make_config()
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        await store.store_many([{"key": f"k{i}", "value": f"item Q-{i}"} for i in range(12)])
        await _forget_terms(store, raw_conn)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        assert store._attached.backfill is not None
        await store._attached.backfill
        assert not store.backfill_pending
        table = f'"{config.schema_name}"."{config.table}"'
        assert await raw_conn.fetchval(f"SELECT count(terms) FROM {table}") == 12


async def test_the_langchain_retriever_uses_the_same_search(
    orders: PostgresStorage[str, Any],
) -> None:
    retriever = PepperpyMemoryRetriever.from_storage(orders, scope=MemoryScope.GLOBAL, k=3)
    documents = await retriever.ainvoke("has A-77812 been sent yet?")
    assert documents[0].metadata["key"] == "shipped"
