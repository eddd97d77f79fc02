"""The search statements: semantic, contextual (full text with a trigram fallback), hybrid
(reciprocal-rank fusion), temporal, and ``similar``.

Each method returns a :class:`~.queries.Query`; values are ``$n`` parameters, restrictions come
from :class:`~.queries.Restriction`, and rows of different branches are matched by the whole
identity, never by key alone.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from .filters import Params
from .queries import (
    _CONTEXTUAL,
    _LIVE,
    _M_OWNER_KEY,
    _OWNER_KEY,
    _SELECT_ENTRY,
    Restriction,
)
from .schema import TableLayout
from .sql import Query
from .types import Identity

__all__ = ["SearchStatements", "Page", "fuzzy_words"]


class Page(NamedTuple):
    """Which results a search returns: ``limit`` of them after skipping ``offset``, scoring at
    least ``min_score`` (None: any)."""

    limit: int
    offset: int = 0
    min_score: float | None = None


_WORD = re.compile(r"\w+", re.UNICODE)
FUZZY_MIN_WORD_LENGTH = 4
FUZZY_MAX_WORDS = 8
FUZZY_MAX_CANDIDATES = 2_000


def fuzzy_words(query: str) -> list[str]:
    """The query's distinct words (at most eight) for trigram matching and scoring."""
    words = [w.lower() for w in _WORD.findall(query) if len(w) >= 2]
    return list(dict.fromkeys(words))[:FUZZY_MAX_WORDS]


def _at_least(params: Params, expression: str, min_score: float | None) -> str:
    if min_score is None:
        return "TRUE"
    return f"({expression}) >= {params.add(float(min_score))}::float8"


def _page(params: Params, order: str, limit: int, offset: int) -> str:
    """``ORDER BY`` the best first, ties broken by identity, then the page."""
    # Unqualified: the identity columns are merged by the joins' USING, or come from a CTE.
    tail = f"LIMIT {params.add(limit)} OFFSET {params.add(offset)}"
    return f"ORDER BY {order}, key, scope, scope_id {tail}"


class SearchStatements:
    """The search SQL of one memory table."""

    def __init__(self, layout: TableLayout) -> None:
        self.layout = layout
        self.table = layout.qualified_table
        self.passages = layout.qualified_passages
        self.vector = layout.vector_column_type

    def _passages_exist(self, params: Params, tenant: str) -> str:
        return (
            f"(SELECT EXISTS (SELECT 1 FROM {self.passages} WHERE tenant = {params.add(tenant)}))"
        )

    def _nearest(self, columns: str, vector: str, where: str, want: str, distance: str) -> str:
        """A CTE body: ``columns`` and the distance (named ``distance``) of the ``want``
        memories nearest to ``vector`` within the restriction ``where``.

        It is the shape pgvector's HNSW index serves (ORDER BY distance LIMIT); with iterative
        scans on, it keeps scanning until the filters let ``want`` rows through. Callers
        materialise it and sort again: relaxed_order scans return rows roughly in order.
        """
        return f"""
            SELECT {columns}, m.embedding <=> {vector} AS {distance}
            FROM {self.table} m
            WHERE m.embedding IS NOT NULL AND {where}
            ORDER BY m.embedding <=> {vector}
            LIMIT {want}
        """

    def _passage_hits(self, params: Params, vector: str, where: str, tenant: str, want: str) -> str:
        """A CTE body: per memory within the restriction, its passages' best distance to
        ``vector``, over the ``want`` nearest passages (the passages' own HNSW index)."""
        # The EXISTS is evaluated once (an InitPlan): a table without passages costs nothing.
        return f"""
            SELECT scope, scope_id, key, min(distance) AS distance FROM (
                SELECT p.scope, p.scope_id, p.key, p.embedding <=> {vector} AS distance
                FROM {self.passages} p
                JOIN {self.table} m USING ({_OWNER_KEY})
                WHERE p.tenant = {params.add(tenant)} AND p.embedding IS NOT NULL AND {where}
                  AND {self._passages_exist(params, tenant)}
                ORDER BY p.embedding <=> {vector}
                LIMIT {want}
            ) nearest GROUP BY scope, scope_id, key
        """

    # --- search ----------------------------------------------------------------------------
    def semantic_search(
        self,
        embedding: Any,
        restriction: Restriction,
        page: Page,
        *,
        include_embedding: bool = False,
        passages: bool = True,
    ) -> Query:
        """The nearest memories. With ``passages=False``, a memory's own vector only (a
        simpler statement: planning it costs a third as much), and every row says in
        ``passages_exist`` whether the tenant has passages, i.e. whether the full statement
        was needed."""
        limit, offset, min_score = page
        params = Params()
        vector = f"{params.add(embedding)}::{self.vector}"
        where = restriction.conditions(params)
        columns = _SELECT_ENTRY + (", m.embedding" if include_embedding else "")
        want = params.add(limit + offset)
        if not passages:
            nearest = self._nearest(columns, vector, where, want, "distance")
            sql = f"""
                WITH hits AS MATERIALIZED ({nearest})
                SELECT *, 1 - distance AS score,
                    {self._passages_exist(params, restriction.tenant)} AS passages_exist
                FROM hits
                WHERE {_at_least(params, "1 - distance", min_score)}
                {_page(params, "distance", limit, offset)}
            """
            return Query(sql, params.values)
        # A memory with passages counts by its best vector: its own or a passage's. Memories
        # found only through a passage are fetched by identity.
        sql = f"""
            WITH hits AS MATERIALIZED (
                {self._nearest(columns, vector, where, want, "own_distance")}
            ),
            passage_hits AS MATERIALIZED (
                {self._passage_hits(params, vector, where, restriction.tenant, want)}
            ),
            merged AS (
                SELECT h.*, LEAST(h.own_distance, ph.distance) AS distance
                FROM hits h LEFT JOIN passage_hits ph USING (scope, scope_id, key)
                UNION ALL
                SELECT {columns}, m.embedding <=> {vector}, ph.distance
                FROM passage_hits ph
                JOIN {self.table} m ON m.tenant = {params.add(restriction.tenant)}
                    AND (m.scope, m.scope_id, m.key) = (ph.scope, ph.scope_id, ph.key)
                WHERE NOT EXISTS (
                    SELECT 1 FROM hits h
                    WHERE (h.scope, h.scope_id, h.key) = (ph.scope, ph.scope_id, ph.key)
                )
            )
            SELECT *, 1 - distance AS score FROM merged
            WHERE {_at_least(params, "1 - distance", min_score)}
            {_page(params, "distance", limit, offset)}
        """
        return Query(sql, params.values)

    def _tsquery(self, params: Params, query: str) -> str:
        return (
            f"websearch_to_tsquery({params.add(self.layout.text_search_config)}::text::regconfig, "
            f"{params.add(query)})"
        )

    def _contextual_ctes(
        self, params: Params, query: str, where: str, tenant: str, want: str
    ) -> str:
        """CTEs ``exact`` and ``fuzzy`` (identity, score), each at most ``want`` rows, best
        first, and ``contextual``, both together.

        Full-text matches come first. The trigram fallback for misspellings runs only when
        they do not fill the window: its cost grows with how common the words' trigrams are,
        so it is kept off the path of queries that full text already answers.
        """
        tsquery = self._tsquery(params, query)
        words = [params.add(word) for word in fuzzy_words(query)]
        # Added only when used: PostgreSQL rejects a parameter that no expression types.
        own_tenant = params.add(tenant) if words else ""
        config = params.add(self.layout.text_search_config) if words else ""
        # Only a word the table has never seen (as a full-text lexeme) can be a misspelling
        # worth a trigram search; it becomes NULL otherwise, and a NULL key makes its trigram
        # index scan return nothing. Evaluated once per query, as an InitPlan.
        suspects = [
            f"""(SELECT CASE WHEN length({w}) >= {FUZZY_MIN_WORD_LENGTH}
                    AND numnode(plainto_tsquery({config}::text::regconfig, {w})) > 0
                    AND NOT EXISTS (SELECT 1 FROM {self.table} x
                        WHERE x.tenant = {own_tenant}
                          AND x.tsv @@ plainto_tsquery({config}::text::regconfig, {w}))
                THEN {w} END)"""
            for w in words
        ]
        if suspects:
            any_suspect = " OR ".join(f"{suspect} <% m.content" for suspect in suspects)
            # Ranked by how well all the query's words appear, so that the correctly spelt
            # words still decide between the rows a misspelt one brings in.
            fuzzy_score = (
                "(" + " + ".join(f"word_similarity({w}, m.content)" for w in words) + ")"
                f" / {len(words)}"
            )
            threshold = "current_setting('pg_trgm.word_similarity_threshold')::float8"
            candidates_match = f"({any_suspect})"
            fuzzy_match = f"{fuzzy_score} >= {threshold}"
        else:
            fuzzy_score, candidates_match, fuzzy_match = "0", "FALSE", "FALSE"
        return f"""
            exact AS MATERIALIZED (
                SELECT {_M_OWNER_KEY}, 0.5 + 0.5 * ts_rank_cd(m.tsv, {tsquery}, 32) AS score
                FROM {self.table} m
                WHERE {_CONTEXTUAL} AND {where} AND m.tsv @@ {tsquery}
                ORDER BY score DESC, m.key, m.scope, m.scope_id
                LIMIT {want}
            ),
            fuzzy AS MATERIALIZED (
                SELECT {_M_OWNER_KEY}, 0.5 * {fuzzy_score} AS score
                FROM (
                    -- A misspelling of a common word matches most of the table; scoring
                    -- is bounded to the first candidates the trigram index yields.
                    SELECT {_M_OWNER_KEY}, m.content FROM {self.table} m
                    WHERE (SELECT count(*) FROM exact) < {want}
                      AND {_CONTEXTUAL} AND {where} AND (m.tsv @@ {tsquery}) IS NOT TRUE
                      AND {candidates_match}
                    LIMIT {FUZZY_MAX_CANDIDATES}
                ) AS m
                WHERE {fuzzy_match}
                ORDER BY score DESC, m.key, m.scope, m.scope_id
                LIMIT {want}
            ),
            contextual AS (
                SELECT {_OWNER_KEY}, score FROM exact
                UNION ALL SELECT {_OWNER_KEY}, score FROM fuzzy
            )
        """

    def contextual_search(
        self,
        query: str,
        restriction: Restriction,
        page: Page,
    ) -> Query:
        limit, offset, min_score = page
        params = Params()
        where = restriction.conditions(params)
        ctes = self._contextual_ctes(
            params, query, where, restriction.tenant, params.add(limit + offset)
        )
        sql = f"""
            WITH {ctes}
            SELECT {_SELECT_ENTRY}, c.score::float8 AS score
            FROM contextual c JOIN {self.table} m USING ({_OWNER_KEY})
            WHERE {_at_least(params, "c.score", min_score)}
            {_page(params, "c.score DESC", limit, offset)}
        """
        return Query(sql, params.values)

    def hybrid_search(
        self,
        query: str,
        embedding: Any,
        restriction: Restriction,
        page: Page,
        *,
        candidates: int,
        rrf_k: int,
        passages: bool = True,
    ) -> Query:
        """Reciprocal-rank fusion of semantic and contextual candidates; ``passages`` as in
        :meth:`semantic_search`."""
        limit, offset, min_score = page
        params = Params()
        where = restriction.conditions(params)
        vector = f"{params.add(embedding)}::{self.vector}"
        pool = params.add(max(candidates, limit + offset))
        k = params.add(float(rrf_k))
        # The word side keeps web-search semantics (every word must appear). Matching any word
        # was tried: words every memory shares ("Ana") then flooded the fused ranking with
        # noise and pushed the right memory out of the top results.
        ctes = self._contextual_ctes(params, query, where, restriction.tenant, pool)
        # Reciprocal-rank fusion in the database, in one round trip: each index ranks its own
        # candidates, ranks are fused as sum(1 / (k + rank)), and the sum is scaled by (k+1)/2
        # so that first place in both lists scores 1.
        own = self._nearest(_M_OWNER_KEY, vector, where, pool, "distance")
        if passages:
            passage_hits = self._passage_hits(params, vector, where, restriction.tenant, pool)
            tenant = params.add(restriction.tenant)
            semantic = f"""
                own AS MATERIALIZED ({own}),
                passage_hits AS MATERIALIZED ({passage_hits}),
                semantic AS (
                    SELECT {_OWNER_KEY}, min(distance) AS distance FROM (
                        SELECT {_OWNER_KEY}, distance FROM own
                        UNION ALL
                        SELECT {tenant}, scope, scope_id, key, distance FROM passage_hits
                    ) both_kinds GROUP BY {_OWNER_KEY}
                )"""
            flag = "FALSE"
        else:
            semantic = f"semantic AS MATERIALIZED ({own})"
            flag = self._passages_exist(params, restriction.tenant)
        sql = f"""
            WITH {semantic},
            semantic_ranked AS (
                SELECT {_OWNER_KEY}, 1 - distance AS semantic_score,
                       row_number() OVER (ORDER BY distance, {_OWNER_KEY}) AS rank
                FROM semantic
            ),
            {ctes},
            contextual_ranked AS (
                SELECT {_OWNER_KEY}, score AS contextual_score,
                       row_number() OVER (ORDER BY score DESC, {_OWNER_KEY}) AS rank
                FROM contextual
            ),
            fused AS (
                SELECT {_OWNER_KEY},
                    (COALESCE(1.0 / ({k} + s.rank), 0) + COALESCE(1.0 / ({k} + c.rank), 0))
                        * ({k} + 1) / 2 AS score,
                    s.semantic_score, c.contextual_score
                FROM semantic_ranked s
                FULL OUTER JOIN contextual_ranked c USING ({_OWNER_KEY})
            )
            SELECT {_SELECT_ENTRY}, f.score::float8 AS score, f.semantic_score,
                   f.contextual_score::float8 AS contextual_score, {flag} AS passages_exist
            FROM fused f JOIN {self.table} m USING ({_OWNER_KEY})
            WHERE {_at_least(params, "f.score", min_score)}
            {_page(params, "f.score DESC", limit, offset)}
        """
        return Query(sql, params.values)

    def temporal_search(
        self,
        query: str | None,
        restriction: Restriction,
        page: Page,
    ) -> Query:
        limit, offset, min_score = page
        params = Params()
        where = restriction.conditions(params)
        matches = "TRUE"
        if query is not None:
            matches = f"{_CONTEXTUAL} AND m.tsv @@ {self._tsquery(params, query)}"
        score = "1.0 / (1.0 + extract(epoch FROM now() - m.updated_at) / 3600.0)"
        sql = f"""
            SELECT {_SELECT_ENTRY}, ({score})::float8 AS score
            FROM {self.table} m
            WHERE {where} AND {matches}
              AND {_at_least(params, score, min_score)}
            {_page(params, "m.updated_at DESC", limit, offset)}
        """
        return Query(sql, params.values)

    def similar(
        self,
        target: Identity,
        restriction: Restriction,
        *,
        limit: int,
        min_score: float | None,
    ) -> Query:
        params = Params([restriction.tenant, *target])
        where = restriction.conditions(params)
        # A scalar subquery becomes an InitPlan parameter, which the HNSW index can order by:
        # the stored vector is used as is, never re-embedded.
        probe = (
            f"(SELECT p.embedding FROM {self.table} p WHERE p.tenant = $1 AND p.scope = $2 "
            "AND p.scope_id = $3 AND p.key = $4 AND (p.expires_at IS NULL OR p.expires_at > now()))"
        )
        sql = f"""
            WITH hits AS MATERIALIZED (
                SELECT {_SELECT_ENTRY}, m.embedding <=> {probe} AS distance
                FROM {self.table} m
                WHERE m.embedding IS NOT NULL AND {where}
                  AND (m.scope, m.scope_id, m.key) <> ($2, $3, $4)
                ORDER BY m.embedding <=> {probe}
                LIMIT {params.add(limit)}
            )
            SELECT *, 1 - distance AS score, 1 - distance AS semantic_score FROM hits
            WHERE distance IS NOT NULL AND {_at_least(params, "1 - distance", min_score)}
            ORDER BY distance, key, scope, scope_id
        """
        return Query(sql, params.values)

    def probe_state(self, tenant: str, target: Identity) -> Query:
        """Whether ``target`` is live, and whether it has an embedding (for similar's errors)."""
        sql = (
            f"SELECT m.embedding IS NOT NULL AS has_embedding FROM {self.table} m "
            f"WHERE m.tenant = $1 AND m.scope = $2 AND m.scope_id = $3 AND m.key = $4 "
            f"AND {_LIVE}"
        )
        return Query(sql, [tenant, *target])
