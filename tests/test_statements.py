"""Statements as they are built, without a database: which operator, which statistics and
which bound values a search sends. (Every statement also runs against PostgreSQL in the other
tests; these pin what must not drift between modes and configurations.)"""

from __future__ import annotations

import re

import pytest

from pepperpy_pg_memory import MemoryScope
from pepperpy_pg_memory.queries import STAGING_COLUMNS, Restriction, Statements
from pepperpy_pg_memory.schema import DISTANCES, SCHEMA_VERSION, TableLayout
from pepperpy_pg_memory.search_sql import Page, SearchStatements
from pepperpy_pg_memory.sql import Batch, Query
from pepperpy_pg_memory.types import Identity

VECTOR = [0.1, 0.2, 0.3]
ANA = Restriction(tenant="acme", scope=MemoryScope.USER, scope_id="ana")
EVERYONE = Restriction(tenant="acme")


def _layout(distance: str = "cosine") -> TableLayout:
    return TableLayout(
        schema="public",
        table="memories",
        dimension=3,
        vector_type="vector",
        text_search_config="english",
        version=SCHEMA_VERSION,
        distance=distance,
    )


def _operators(sql: str) -> set[str]:
    return set(re.findall(r"<=>|<->|<#>", sql))


@pytest.mark.parametrize("distance", sorted(DISTANCES))
def test_every_vector_statement_uses_the_tables_operator_only(distance: str) -> None:
    layout = _layout(distance)
    searches = SearchStatements(layout)
    operator = DISTANCES[distance][0]
    built = [
        searches.semantic_search(VECTOR, ANA, Page(5)),
        searches.semantic_search(VECTOR, ANA, Page(5), passages=False),
        searches.hybrid_search("tea", VECTOR, ANA, Page(5), candidates=50, rrf_k=60),
    ]
    for query in built:
        assert _operators(query.sql) == {operator}
        assert VECTOR in query.args  # the query's vector is a bound value
    similar = searches.similar(Identity("user", "ana", "k"), ANA, limit=5, min_score=None)
    assert _operators(similar.sql) == {operator}
    assert f"embedding {layout.vector_ops}" in layout.hnsw_index_statement()
    assert layout.vector_ops.endswith(DISTANCES[distance][1])


def test_the_embedding_and_the_owner_are_bound_values_never_sql_text() -> None:
    query = SearchStatements(_layout()).semantic_search(VECTOR, ANA, Page(5, 0, 0.5))
    assert VECTOR in query.args and "ana" in query.args and 0.5 in query.args
    assert "0.1" not in query.sql and "'ana'" not in query.sql


@pytest.mark.parametrize(
    ("distance", "score"),
    [("cosine", "(1 - distance)"), ("l2", "(-distance)"), ("inner_product", "(-distance)")],
)
def test_scores_follow_langgraphs_conventions(distance: str, score: str) -> None:
    layout = _layout(distance)
    assert layout.score_of("distance") == score
    query = SearchStatements(layout).semantic_search(VECTOR, ANA, Page(5))
    assert f"{score} AS score" in query.sql
    # Hybrid fusion and ranking weigh by a cosine, whatever the table's distance.
    assert f"{layout.cosine_of('distance')} AS similarity" in query.sql


def test_a_search_within_one_owner_weighs_terms_by_that_owners_statistics() -> None:
    layout = _layout()
    owner = SearchStatements(layout).contextual_search("payroll", ANA, Page(5))
    assert layout.qualified_owner_terms in owner.sql
    assert layout.qualified_term_stats not in owner.sql
    assert "ana" in owner.args
    across = SearchStatements(layout).contextual_search("payroll", EVERYONE, Page(5))
    assert layout.qualified_term_stats in across.sql
    assert layout.qualified_owner_terms not in across.sql
    tenant_wide = SearchStatements(layout, term_statistics="tenant")
    assert (
        layout.qualified_owner_terms
        not in tenant_wide.contextual_search("payroll", ANA, Page(5)).sql
    )


def test_an_owner_is_one_scope_and_its_id() -> None:
    assert ANA.owner == ("user", "ana")
    assert EVERYONE.owner is None
    assert Restriction(tenant="acme", scope=MemoryScope.GLOBAL, scope_id="").owner == (
        "global",
        "",
    )
    assert Restriction(tenant="acme", scope=MemoryScope.USER).owner is None


def test_a_small_batch_is_one_statement_of_bound_rows_in_identity_order() -> None:
    def record(scope_id: str, key: str) -> tuple[object, ...]:
        fields = {"scope": "user", "scope_id": scope_id, "key": key, "content": f"text {key}"}
        return tuple(fields.get(name, f"<{name}>") for name in STAGING_COLUMNS)

    records = [record("bruno", "b1"), record("ana", "a'); DROP TABLE memories; --")]
    query = Statements(_layout()).upsert_rows("acme", records)
    assert query.args[0] == "acme"
    for row in records:  # every value is bound, none spliced
        assert all(value in query.args for value in row)
    assert "DROP TABLE" not in query.sql and "bruno" not in query.sql
    assert query.sql.count("::") >= len(records) * len(STAGING_COLUMNS)
    # Written in the identity order every writer locks in; old passages go in the same one.
    assert "ORDER BY s.scope, s.scope_id, s.key" in " ".join(query.sql.split())
    assert "DELETE FROM" in query.sql and "ON CONFLICT" in query.sql


def test_transaction_settings_bind_their_values_on_one_server_and_quote_them_on_a_cluster() -> None:
    from pepperpy_pg_memory.history import settings_query

    one = settings_query({"pepperpy.tenant": "it's", "hnsw.ef_search": "200"}, False)
    assert one.sql == "SELECT set_config($1, $2, true), set_config($3, $4, true)"
    assert one.args == ["pepperpy.tenant", "it's", "hnsw.ef_search", "200"]
    cluster = settings_query({"pepperpy.tenant": "it's", "hnsw.ef_search": "200"}, True)
    assert cluster.sql == "SET LOCAL pepperpy.tenant = 'it''s'; SET LOCAL hnsw.ef_search = '200'"
    assert not cluster.args


def test_a_conversations_context_is_read_by_position_with_every_value_bound() -> None:
    statements = Statements(_layout())
    query = statements.turns_before(ANA, 7, 2)
    assert "ORDER BY CASE WHEN jsonb_typeof" in query.sql and "DESC, m.key DESC" in query.sql
    assert ["conversation", "position"] in query.args and 7 in query.args and 2 in query.args
    assert "'conversation'" not in query.sql  # the field's name travels as a parameter


def test_a_statement_for_each_row_is_a_batch_that_keeps_what_runs_before_it() -> None:
    statement = Query("UPDATE t SET v = $2 WHERE k = $1", ("ignored",), "SET LOCAL x = 'on'")
    batch = statement.for_each((key, n) for n, key in enumerate("ab"))
    assert batch == Batch(
        "UPDATE t SET v = $2 WHERE k = $1", [("a", 0), ("b", 1)], "SET LOCAL x = 'on'"
    )


def test_a_read_by_identities_names_each_key_once() -> None:
    # Reads by owner (LangGraph's gets, retrieve_by_owner) restrict by identity; a key list
    # beside it was the same condition twice, and a nested loop over the identities sorted
    # the whole list again on every probe (10,000 gets: 5 s instead of 0.2 s, once the
    # table's statistics made the planner choose that loop).
    statements = Statements(_layout())
    names = frozenset(Identity("user", "ana", f"k{i}") for i in range(3))
    by_identity = Restriction(tenant="acme", identities=names)
    for build in (statements.values_by_owner, statements.retrieve_many, statements.owners_of):
        query = build(["k0", "k1", "k2"], by_identity)
        assert "ANY(" not in query.sql
        assert ["k0", "k1", "k2"] in query.args  # the keys, once: in the identities' arrays
        assert query.args.count(["k0", "k1", "k2"]) == 1
        # Keys without owners are still matched by the key list.
        query = build(["k0", "k1"], EVERYONE)
        assert "m.key = ANY($1::text[])" in query.sql and query.args[0] == ["k0", "k1"]
