"""Every SQL statement the store runs, built apart from running it.

Each builder returns ``(sql, args)``; the store only awaits them, so the SQL can be read and
tested without a database. Values are always ``$n`` parameters; the only names in the text are
the table's, validated and quoted by :mod:`pepperpy_pg_memory.identifiers`, and this module's
own column names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from .filters import Params, compile_filter
from .schema import GIN_INDEXES, TableLayout
from .types import Identity, MemoryScope, MemoryType

__all__ = ["Statements", "Restriction", "STAGING_COLUMNS", "ENTRY_COLUMNS"]

ENTRY_COLUMNS = (
    "key",
    "value",
    "content",
    "memory_type",
    "scope",
    "scope_id",
    "indices",
    "metadata",
    "created_at",
    "updated_at",
    "expires_at",
)
_SELECT_ENTRY = ", ".join(f"m.{column}" for column in ENTRY_COLUMNS)

# Columns a write supplies, in the order of store()'s parameters and of the COPY records.
STAGING_COLUMNS = (
    "key",
    "value",
    "content",
    "content_hash",
    "memory_type",
    "scope",
    "scope_id",
    "indices",
    "metadata",
    "embedding",
    "ttl",
    "expires_at",
)

_LIVE = "(m.expires_at IS NULL OR m.expires_at > now())"
# How rows of one statement's branches are matched to each other and to the table: by the
# whole identity, never by key alone (several owners may hold one key).
_OWNER_KEY = "tenant, scope, scope_id, key"
_M_OWNER_KEY = "m.tenant, m.scope, m.scope_id, m.key"
_SEMANTIC = "m.indices @> ARRAY['semantic']"
_CONTEXTUAL = "m.indices @> ARRAY['contextual']"

ListOrder = Literal["created_at", "updated_at", "key"]
_ORDER_COLUMNS: dict[str, str] = {
    "created_at": "m.created_at",
    "updated_at": "m.updated_at",
    "key": "m.key",
}
# Breaks ties between rows of equal order value: the rest of the identity.
_TIE_BREAK = ("m.key", "m.scope", "m.scope_id")


def _identity_arrays(identities: Sequence[Identity]) -> list[list[str]]:
    """Three parallel arrays (scopes, scope ids, keys) for ``unnest``."""
    return [
        [i.scope for i in identities],
        [i.scope_id for i in identities],
        [i.key for i in identities],
    ]


def _in_identities(params: Params, identities: Sequence[Identity]) -> str:
    scopes, scope_ids, keys = (params.add(a) for a in _identity_arrays(identities))
    return (
        f"(m.scope, m.scope_id, m.key) IN (SELECT * FROM unnest("
        f"{scopes}::text[], {scope_ids}::text[], {keys}::text[]))"
    )


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


@dataclass(frozen=True)
class Restriction:
    """Which memories a read, search or delete may see. Every field narrows; None means any.

    ``tenant`` is always matched: a store acts for one tenant ('' when none is configured).
    """

    tenant: str = ""
    scope: MemoryScope | None = None
    scope_id: str | None = None
    types: frozenset[MemoryType] | None = None
    filter: Mapping[str, Any] | None = None
    value_filter: Mapping[str, Any] | None = None
    keys: frozenset[str] | None = None
    identities: frozenset[Identity] | None = None
    key_prefix: str | tuple[str, ...] | None = None
    """Keys starting with this, or with any of these."""
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    include_expired: bool = False

    def conditions(self, params: Params) -> str:
        parts = [f"m.tenant = {params.add(self.tenant)}"]
        if not self.include_expired:
            parts.append(_LIVE)
        if self.scope is not None:
            parts.append(f"m.scope = {params.add(self.scope.value)}")
        if self.scope_id is not None:
            parts.append(f"m.scope_id = {params.add(self.scope_id)}")
        if self.types is not None:
            parts.append(f"m.memory_type = ANY({params.add(sorted(t.value for t in self.types))})")
        if self.keys is not None:
            parts.append(f"m.key = ANY({params.add(sorted(self.keys))}::text[])")
        if self.identities is not None:
            parts.append(_in_identities(params, sorted(self.identities)))
        if isinstance(self.key_prefix, str):
            parts.append(f"starts_with(m.key, {params.add(self.key_prefix)})")
        elif self.key_prefix is not None:
            parts.append(f"m.key ^@ ANY({params.add(list(self.key_prefix))}::text[])")
        for column, operator, bound in (
            ("created_at", ">=", self.created_after),
            ("created_at", "<", self.created_before),
            ("updated_at", ">=", self.updated_after),
            ("updated_at", "<", self.updated_before),
        ):
            if bound is not None:
                parts.append(f"m.{column} {operator} {params.add(bound)}")
        if self.filter:
            parts.append(compile_filter(self.filter, params, column="m.metadata"))
        if self.value_filter:
            parts.append(compile_filter(self.value_filter, params, column="m.value"))
        return " AND ".join(parts)


class Statements:
    """The SQL of one memory table."""

    def __init__(self, layout: TableLayout) -> None:
        self.layout = layout
        self.table = layout.qualified_table
        self.registry = layout.registry
        self.vector = layout.vector_column_type
        self.staging = f"pepperpy_staging_{layout.table}_{int(layout.dimension)}"

    # --- writes --------------------------------------------------------------------------
    def _upsert_tail(self) -> str:
        # created_at survives an update unless the old row had expired: an expired memory is
        # gone, and storing its key again starts a new one. updated_at is the moment of the
        # write (clock_timestamp, not the transaction's start), so that of concurrent upserts
        # of one key, the one that committed last also has the latest updated_at. The
        # embedding is kept when the caller sent none because the text is unchanged (see
        # PostgresStorage._plan_embeddings).
        # The conflict target is the whole identity: a write never moves a memory to another
        # owner, and never touches a memory another owner holds under the same key.
        return f"""
            ON CONFLICT ({_OWNER_KEY}) DO UPDATE SET
                value = EXCLUDED.value,
                content = EXCLUDED.content,
                content_hash = EXCLUDED.content_hash,
                memory_type = EXCLUDED.memory_type,
                indices = EXCLUDED.indices,
                metadata = EXCLUDED.metadata,
                embedding = CASE
                    WHEN EXCLUDED.embedding IS NULL
                         AND EXCLUDED.indices @> ARRAY['semantic']
                         AND m.content_hash = EXCLUDED.content_hash
                    THEN m.embedding
                    ELSE EXCLUDED.embedding END,
                created_at = CASE
                    WHEN m.expires_at IS NOT NULL AND m.expires_at <= now() THEN now()
                    ELSE m.created_at END,
                updated_at = clock_timestamp(),
                expires_at = EXCLUDED.expires_at
            RETURNING m.scope, m.scope_id, m.key, m.created_at, m.updated_at, m.expires_at,
                (m.embedding IS NULL AND m.indices @> ARRAY['semantic']) AS needs_embedding
        """

    def upsert_one(self, tenant: str, record: Sequence[Any]) -> tuple[str, list[Any]]:
        sql = f"""
            INSERT INTO {self.table} AS m (key, value, content, content_hash, memory_type,
                scope, scope_id, indices, metadata, embedding, expires_at, tenant)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::{self.vector},
                COALESCE($12::timestamptz, now() + $11::interval), $13)
            {self._upsert_tail()}
        """
        return sql, [*record, tenant]

    def create_staging(self) -> str:
        # One temporary table per connection, emptied at each commit: COPY needs a target, and
        # re-creating it per batch would churn the catalog.
        return f"""
            CREATE TEMPORARY TABLE IF NOT EXISTS {self.staging} (
                key text, value jsonb, content text, content_hash bytea, memory_type text,
                scope text, scope_id text, indices text[], metadata jsonb,
                embedding {self.vector}, ttl interval, expires_at timestamptz
            ) ON COMMIT DELETE ROWS
        """

    def merge_staging(self, tenant: str) -> tuple[str, list[Any]]:
        """The staged rows upserted; returns the identities left needing an embedding."""
        sql = f"""
            WITH merged AS (
                INSERT INTO {self.table} AS m (key, value, content, content_hash, memory_type,
                    scope, scope_id, indices, metadata, embedding, expires_at, tenant)
                SELECT key, value, content, content_hash, memory_type, scope, scope_id, indices,
                    metadata, embedding, COALESCE(expires_at, now() + ttl), $1
                FROM {self.staging}
                {self._upsert_tail()}
            )
            SELECT scope, scope_id, key FROM merged WHERE needs_embedding
        """
        return sql, [tenant]

    def set_embeddings(self) -> str:
        """Arguments per row: tenant, scope, scope_id, key, vector, content hash."""
        # Only if the text is still the one that was embedded: a concurrent writer that changed
        # it has written its own embedding.
        return (
            f"UPDATE {self.table} SET embedding = $5::{self.vector} "
            "WHERE tenant = $1 AND scope = $2 AND scope_id = $3 AND key = $4 "
            "AND content_hash = $6"
        )

    def touch(self, tenant: str, identities: Sequence[Identity], ttl: Any) -> tuple[str, list[Any]]:
        params = Params([tenant, ttl])
        return (
            f"UPDATE {self.table} m SET expires_at = now() + $2::interval "
            f"WHERE m.tenant = $1 AND {_in_identities(params, identities)} AND {_LIVE}",
            params.values,
        )

    def known_hashes(self, tenant: str, identities: Sequence[Identity]) -> tuple[str, list[Any]]:
        params = Params([tenant])
        return (
            f"SELECT m.scope, m.scope_id, m.key, m.content_hash FROM {self.table} m "
            f"WHERE m.tenant = $1 AND {_in_identities(params, identities)} "
            "AND m.embedding IS NOT NULL",
            params.values,
        )

    # --- reads -----------------------------------------------------------------------------
    def retrieve(
        self, key: str, restriction: Restriction, include_embedding: bool
    ) -> tuple[str, list[Any]]:
        """The memories under ``key`` the restriction lets through: one row with an owner
        given; without one, up to two (two mean the key is ambiguous)."""
        params = Params([key])
        extra = ", m.embedding" if include_embedding else ""
        sql = (
            f"SELECT {_SELECT_ENTRY}{extra} FROM {self.table} m "
            f"WHERE m.key = $1 AND {restriction.conditions(params)} LIMIT 2"
        )
        return sql, params.values

    def _under_keys(
        self, columns: str, keys: list[str], restriction: Restriction
    ) -> tuple[str, list[Any]]:
        params = Params([keys])
        sql = (
            f"SELECT {columns} FROM {self.table} m "
            f"WHERE m.key = ANY($1::text[]) AND {restriction.conditions(params)}"
        )
        return sql, params.values

    def owners_of(self, keys: list[str], restriction: Restriction) -> tuple[str, list[Any]]:
        """Every (scope, scope_id, key) holding one of ``keys`` within the restriction."""
        return self._under_keys("m.scope, m.scope_id, m.key", keys, restriction)

    def retrieve_many(self, keys: list[str], restriction: Restriction) -> tuple[str, list[Any]]:
        return self._under_keys(_SELECT_ENTRY, keys, restriction)

    def exists(self, key: str, restriction: Restriction) -> tuple[str, list[Any]]:
        """How many owners hold ``key`` within the restriction, counted no further than 2."""
        params = Params([key])
        sql = (
            f"SELECT count(*) FROM (SELECT 1 FROM {self.table} m "
            f"WHERE m.key = $1 AND {restriction.conditions(params)} LIMIT 2) AS found"
        )
        return sql, params.values

    def distinct_metadata(
        self, path: list[str], restriction: Restriction, limit: int
    ) -> tuple[str, list[Any]]:
        params = Params()
        extracted = f"m.metadata #> {params.add(path)}::text[]"
        where = restriction.conditions(params)
        sql = (
            f"SELECT {extracted} AS value, count(*) AS memories FROM {self.table} m "
            f"WHERE {where} AND {extracted} IS NOT NULL "
            f"GROUP BY 1 ORDER BY 1 LIMIT {params.add(limit)}"
        )
        return sql, params.values

    def count(self, restriction: Restriction) -> tuple[str, list[Any]]:
        params = Params()
        sql = f"SELECT count(*) FROM {self.table} m WHERE {restriction.conditions(params)}"
        return sql, params.values

    def list_page(
        self,
        restriction: Restriction,
        *,
        limit: int,
        offset: int,
        order_by: ListOrder,
        descending: bool,
    ) -> tuple[str, list[Any]]:
        params = Params()
        where = restriction.conditions(params)
        direction = "DESC" if descending else "ASC"
        order = _ORDER_COLUMNS[order_by]
        ties = ", ".join(f"{column} {direction}" for column in _TIE_BREAK if column != order)
        sql = (
            f"SELECT {_SELECT_ENTRY} FROM {self.table} m WHERE {where} "
            f"ORDER BY {order} {direction}, {ties} "
            f"LIMIT {params.add(limit)} OFFSET {params.add(offset)}"
        )
        return sql, params.values

    def scan_page(
        self, restriction: Restriction, after: Identity | None, limit: int
    ) -> tuple[str, list[Any]]:
        """The next ``limit`` memories in identity order after ``after`` (a keyset page: each
        page costs the same however far the scan has gone, unlike OFFSET)."""
        params = Params()
        where = restriction.conditions(params)
        if after is not None:
            bound = ", ".join(params.add(part) for part in after)
            where += f" AND (m.scope, m.scope_id, m.key) > ({bound})"
        sql = (
            f"SELECT {_SELECT_ENTRY} FROM {self.table} m WHERE {where} "
            f"ORDER BY m.scope, m.scope_id, m.key LIMIT {params.add(limit)}"
        )
        return sql, params.values

    # --- deletes ---------------------------------------------------------------------------
    def delete(self, key: str, restriction: Restriction) -> tuple[str, list[Any]]:
        params = Params([key])
        sql = (
            f"DELETE FROM {self.table} m WHERE m.key = $1 "
            f"AND {restriction.conditions(params)} "
            f"RETURNING {_LIVE} AS live"
        )
        return sql, params.values

    def delete_many(self, restriction: Restriction) -> tuple[str, list[Any]]:
        params = Params()
        sql = f"DELETE FROM {self.table} m WHERE {restriction.conditions(params)}"
        return sql, params.values

    def delete_expired_batch(self, restriction: Restriction, batch: int) -> tuple[str, list[Any]]:
        params = Params()
        where = restriction.conditions(params)
        # Bounded batches with SKIP LOCKED: a sweep never holds many row locks at once and
        # never waits on a writer. Rows are named by their whole identity: another owner's
        # live memory under the same key is not expired and stays.
        sql = f"""
            DELETE FROM {self.table} d WHERE ({_OWNER_KEY}) IN (
                SELECT {_M_OWNER_KEY} FROM {self.table} m
                WHERE m.expires_at <= now() AND {where}
                LIMIT {params.add(batch)} FOR UPDATE SKIP LOCKED)
            AND d.expires_at <= now()
        """
        return sql, params.values

    def drop_vector_index(self) -> str:
        return f"DROP INDEX IF EXISTS {self.layout.qualified_index('embedding_idx')}"

    def build_vector_index(self, maintenance_work_mem: str) -> list[tuple[str, list[Any]]]:
        """Build the HNSW index in one pass, with more memory for this transaction only
        (run inside a transaction)."""
        return [
            ("SELECT set_config('maintenance_work_mem', $1, true)", [maintenance_work_mem]),
            (self.layout.hnsw_index_statement(), []),
        ]

    def after_bulk_load(self) -> list[tuple[str, list[Any]]]:
        """Statements that make a freshly loaded table fast to search: merge the GIN pending
        lists (every search scans them until merged) and refresh the planner's statistics."""
        return [
            ("SELECT gin_clean_pending_list($1::regclass)", [self.layout.qualified_index(suffix)])
            for suffix in GIN_INDEXES
        ] + [(f"ANALYZE {self.table}", [])]

    def count_up_to(self) -> str:
        """Rows in the table, counted no further than $1 (cheap on a large table)."""
        return f"SELECT count(*) FROM (SELECT 1 FROM {self.table} LIMIT $1) AS bounded"

    def count_expired(self) -> str:
        return f"SELECT count(*) FROM {self.table} WHERE tenant = $1 AND expires_at <= now()"

    # --- search ----------------------------------------------------------------------------
    def semantic_search(
        self,
        embedding: Any,
        restriction: Restriction,
        *,
        limit: int,
        offset: int,
        min_score: float | None,
        include_embedding: bool = False,
    ) -> tuple[str, list[Any]]:
        params = Params()
        vector = f"{params.add(embedding)}::{self.vector}"
        where = restriction.conditions(params)
        extra = ", m.embedding" if include_embedding else ""
        # The inner query is the shape pgvector's HNSW index serves (ORDER BY distance LIMIT);
        # with iterative scans on, it keeps scanning until the filters let `limit` rows through.
        # MATERIALIZED and the outer ORDER BY restore exact order after relaxed_order scans.
        sql = f"""
            WITH hits AS MATERIALIZED (
                SELECT {_SELECT_ENTRY}{extra}, m.embedding <=> {vector} AS distance
                FROM {self.table} m
                WHERE m.embedding IS NOT NULL AND {where}
                ORDER BY m.embedding <=> {vector}
                LIMIT {params.add(limit + offset)}
            )
            SELECT *, 1 - distance AS score FROM hits
            WHERE {_at_least(params, "1 - distance", min_score)}
            ORDER BY distance, key, scope, scope_id
            LIMIT {params.add(limit)} OFFSET {params.add(offset)}
        """
        return sql, params.values

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
        *,
        limit: int,
        offset: int,
        min_score: float | None,
    ) -> tuple[str, list[Any]]:
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
            ORDER BY c.score DESC, m.key, m.scope, m.scope_id
            LIMIT {params.add(limit)} OFFSET {params.add(offset)}
        """
        return sql, params.values

    def hybrid_search(
        self,
        query: str,
        embedding: Any,
        restriction: Restriction,
        *,
        limit: int,
        offset: int,
        min_score: float | None,
        candidates: int,
        rrf_k: int,
    ) -> tuple[str, list[Any]]:
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
        sql = f"""
            WITH semantic AS MATERIALIZED (
                SELECT {_M_OWNER_KEY}, m.embedding <=> {vector} AS distance
                FROM {self.table} m
                WHERE m.embedding IS NOT NULL AND {where}
                ORDER BY m.embedding <=> {vector}
                LIMIT {pool}
            ),
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
                   f.contextual_score::float8 AS contextual_score
            FROM fused f JOIN {self.table} m USING ({_OWNER_KEY})
            WHERE {_at_least(params, "f.score", min_score)}
            ORDER BY f.score DESC, m.key, m.scope, m.scope_id
            LIMIT {params.add(limit)} OFFSET {params.add(offset)}
        """
        return sql, params.values

    def temporal_search(
        self,
        query: str | None,
        restriction: Restriction,
        *,
        limit: int,
        offset: int,
        min_score: float | None,
    ) -> tuple[str, list[Any]]:
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
            ORDER BY m.updated_at DESC, m.key, m.scope, m.scope_id
            LIMIT {params.add(limit)} OFFSET {params.add(offset)}
        """
        return sql, params.values

    def similar(
        self,
        target: Identity,
        restriction: Restriction,
        *,
        limit: int,
        min_score: float | None,
    ) -> tuple[str, list[Any]]:
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
            SELECT *, 1 - distance AS score FROM hits
            WHERE distance IS NOT NULL AND {_at_least(params, "1 - distance", min_score)}
            ORDER BY distance, key, scope, scope_id
        """
        return sql, params.values

    def probe_state(self, tenant: str, target: Identity) -> tuple[str, list[Any]]:
        """Whether ``target`` is live, and whether it has an embedding (for similar's errors)."""
        sql = (
            f"SELECT m.embedding IS NOT NULL AS has_embedding FROM {self.table} m "
            f"WHERE m.tenant = $1 AND m.scope = $2 AND m.scope_id = $3 AND m.key = $4 "
            f"AND {_LIVE}"
        )
        return sql, [tenant, *target]

    # --- maintenance -----------------------------------------------------------------------
    def reindex_batch(self) -> str:
        """Arguments: tenant, the cursor (scope, scope_id, key), the batch size. Walks the
        primary key's order."""
        return (
            f"SELECT m.scope, m.scope_id, m.key, m.content, m.content_hash FROM {self.table} m "
            f"WHERE m.tenant = $1 AND {_SEMANTIC} AND {_LIVE} "
            "AND (m.scope, m.scope_id, m.key) > ($2, $3, $4) "
            "ORDER BY m.scope, m.scope_id, m.key LIMIT $5"
        )

    def count_semantic(self) -> str:
        return (
            f"SELECT count(*) FROM {self.table} m WHERE m.tenant = $1 AND {_SEMANTIC} AND {_LIVE}"
        )

    def count_contextual(self) -> str:
        return f"SELECT count(*) FROM {self.table} m WHERE m.tenant = $1 AND {_CONTEXTUAL}"

    def save_reindex_cursor(self) -> str:
        return (
            f"UPDATE {self.registry} SET reindex_cursor = $2, updated_at = now() "
            "WHERE table_name = $1"
        )

    def load_reindex_cursor(self) -> str:
        return f"SELECT reindex_cursor FROM {self.registry} WHERE table_name = $1"

    def record_dimension(self) -> str:
        return (
            f"UPDATE {self.registry} SET dimension = $2, vector_type = $3, updated_at = now() "
            "WHERE table_name = $1"
        )

    def record_text_search_config(self) -> str:
        return (
            f"UPDATE {self.registry} SET text_search_config = $2, updated_at = now() "
            "WHERE table_name = $1"
        )

    def retype_embedding_column(self) -> str:
        """Give the embedding column this layout's type, dropping every stored vector."""
        return (
            f"ALTER TABLE {self.table} ALTER COLUMN embedding "
            f"TYPE {self.layout.vector_column_type} USING NULL"
        )

    def set_tsvector_expression(self) -> str:
        """Recompute the generated tsvector column with this layout's text search config."""
        return (
            f"ALTER TABLE {self.table} ALTER COLUMN tsv "
            f"SET EXPRESSION AS ({self.layout.tsvector_expression()})"
        )

    def reindex_contextual(self) -> list[str]:
        return [
            f"REINDEX INDEX {self.layout.qualified_index(suffix)}"
            for suffix in ("tsv_idx", "trgm_idx")
        ]

    def index_sizes(self) -> str:
        return (
            "SELECT c.relname AS name, pg_relation_size(c.oid) AS bytes FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass "
            "ORDER BY c.relname"
        )

    def table_sizes(self) -> str:
        return (
            "SELECT pg_total_relation_size($1::regclass) AS total, "
            "pg_relation_size($1::regclass) AS heap"
        )
