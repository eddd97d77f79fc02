"""What a memory table looks like: its recorded layout (:class:`TableLayout` — names,
vector type, distance, dimension, schema version), the vector types pgvector can index, and the
names and versions the rest of the library asks the layout about (the GIN indexes, the version
that added terms or history, the settings a statement sets to speak to the triggers)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..errors import MemoryConfigurationError
from ..identifiers import qualified, quote_ident, text_literal
from ..sql import Query

REGISTRY = "pepperpy_memory_tables"
# pg_advisory_xact_lock key shared by every store: extension and registry creation are
# database-wide, so one lock serialises all of them. (A constant: "pepperpy" in ASCII.)
MIGRATION_LOCK_KEY = 0x7065707065727079

# pgvector's HNSW indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000.
_VECTOR_MAX = 2_000
MAX_INDEXED_DIMENSION = 4_000


def vector_type_for(dimension: int, chosen: str | None = None) -> str:
    """The pgvector column type for embeddings of ``dimension``: ``chosen`` ("vector" or
    "halfvec", PostgresConfig.vector_type), else ``vector`` while pgvector can index it."""
    if dimension < 1:
        raise MemoryConfigurationError(f"embedding dimension must be positive, got {dimension}")
    if chosen not in (None, "vector", "halfvec"):
        raise MemoryConfigurationError(
            f"vector_type is {chosen!r}: 'vector' or 'halfvec'", field="vector_type"
        )
    if chosen == "vector" and dimension > _VECTOR_MAX:
        raise MemoryConfigurationError(
            f"{dimension}-dimensional `vector` columns cannot be indexed by pgvector's HNSW "
            f"(at most {_VECTOR_MAX}): use vector_type='halfvec'",
            field="vector_type",
        )
    if dimension <= _VECTOR_MAX and chosen != "halfvec":
        return "vector"
    if dimension <= MAX_INDEXED_DIMENSION:
        return "halfvec"
    raise MemoryConfigurationError(
        f"{dimension}-dimensional embeddings cannot be indexed by pgvector's HNSW "
        f"(at most {MAX_INDEXED_DIMENSION}); use a model with fewer dimensions"
    )


DISTANCES: dict[str, tuple[str, str]] = {
    "cosine": ("<=>", "cosine_ops"),
    "l2": ("<->", "l2_ops"),
    "inner_product": ("<#>", "ip_ops"),
}
"""Per way of comparing vectors: pgvector's distance operator and operator class suffix."""


class RefreshCheck(str):
    """:attr:`TableLayout.refresh_check`: the qualified name of the function that asks whether
    a TTL refresh extends a memory's expiry (SQL text, as any name), which also knows the
    table of refreshes it reads: a read can first ask, once, whether the owners it reads have
    any refresh at all (see :meth:`~.queries.Restriction.conditions`)."""

    refreshes: str
    """The qualified table of refreshes."""

    def __new__(cls, function: str, refreshes: str) -> RefreshCheck:
        check = super().__new__(cls, function)
        check.refreshes = refreshes
        return check


@dataclass(frozen=True)
class TableLayout:
    """What a memory table looks like, as recorded in the registry."""

    schema: str
    table: str
    dimension: int
    vector_type: str
    text_search_config: str
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    version: int = 0
    embedder: str | None = None
    """The identity of the model whose vectors the table holds (None: not recorded yet)."""
    distance: str = "cosine"
    """How vectors are compared (a key of :data:`DISTANCES`): the vector indexes' operator
    class, the searches' operator and their scores."""
    distribution: str | None = None
    """How the table is placed on a Citus cluster ("owner", "tenant"; None: an ordinary
    table): its statements take the shapes Citus runs (see distribution.py)."""

    @property
    def distributed(self) -> bool:
        return self.distribution is not None

    @property
    def distance_operator(self) -> str:
        return DISTANCES[self.distance][0]

    @property
    def vector_ops(self) -> str:
        return f"{self.vector_type}_{DISTANCES[self.distance][1]}"

    def score_of(self, distance: str) -> str:
        """SQL for a search score, higher is nearer, from pgvector's ``distance``: a cosine
        (``1 - distance``), the inner product (``<#>`` is its negative) or the negative
        Euclidean distance — LangGraph's conventions."""
        if self.distance == "cosine":
            return f"(1 - {distance})"
        return f"(-{distance})"

    def cosine_of(self, distance: str) -> str:
        """SQL for the cosine ``distance`` implies for unit-length vectors (what embedding
        models give): the semantic side's confidence in hybrid fusion and in ranking."""
        if self.distance == "l2":
            return f"(1 - {distance} * {distance} / 2)"
        return self.score_of(distance)

    @property
    def qualified_table(self) -> str:
        return qualified(self.schema, self.table)

    @property
    def registry(self) -> str:
        return qualified(self.schema, REGISTRY)

    @property
    def passages_name(self) -> str:
        """The side table of passage vectors (see :func:`_v5_passages`), unquoted."""
        return f"{self.table}_passages"

    @property
    def qualified_passages(self) -> str:
        return qualified(self.schema, self.passages_name)

    def passages_hnsw_statement(self) -> str:
        return (
            f"CREATE INDEX IF NOT EXISTS {quote_ident(self.passages_name + '_embedding_idx')} "
            f"{self._hnsw_on(self.qualified_passages)}"
        )

    @property
    def history_name(self) -> str:
        """Every version of every memory (see :func:`_v8_history`), unquoted."""
        return f"{self.table}_history"

    @property
    def qualified_history(self) -> str:
        return qualified(self.schema, self.history_name)

    @property
    def access_name(self) -> str:
        """How often and when each memory was last read (see :func:`_v9_importance_and_access`),
        unquoted."""
        return f"{self.table}_access"

    @property
    def qualified_access(self) -> str:
        return qualified(self.schema, self.access_name)

    @property
    def refreshes_name(self) -> str:
        """The later expiries TTL refreshes gave memories (see
        :func:`_v23_expiry_refreshes`), unquoted."""
        return f"{self.table}_refreshes"

    @property
    def qualified_refreshes(self) -> str:
        return qualified(self.schema, self.refreshes_name)

    @property
    def expiry_refreshes(self) -> str | None:
        """The qualified table whose refreshes extend memories' expiries, when the statements
        keep TTL refreshes beside the memories; None when a refresh rewrites the memory's row
        (before schema 23, and on a cluster, where Citus runs no subquery in an upsert's SET
        clause, which a write over a refreshed memory needs)."""
        if self.version < EXPIRY_REFRESHES_VERSION or self.distributed:
            return None
        return self.qualified_refreshes

    @property
    def qualified_refreshed_function(self) -> str:
        """The function ``(tenant, scope, scope_id, key, expires_at, moment) -> boolean``: a
        refresh of the memory's expiry ``expires_at`` lasts past ``moment`` (see
        :func:`_v23_expiry_refreshes`)."""
        return qualified(self.schema, f"{self.table}_refreshed")

    @property
    def refresh_check(self) -> RefreshCheck | None:
        """:attr:`qualified_refreshed_function` when the statements keep TTL refreshes
        beside the memories (:attr:`expiry_refreshes`); None otherwise."""
        if self.expiry_refreshes is None:
            return None
        return RefreshCheck(self.qualified_refreshed_function, self.expiry_refreshes)

    @property
    def term_stats_name(self) -> str:
        """Per tenant and term, how many memories hold it (see :func:`_v6_terms`), unquoted."""
        return f"{self.table}_term_stats"

    @property
    def term_totals_name(self) -> str:
        """Per tenant, how many memories have terms and their mean number, unquoted."""
        return f"{self.table}_term_totals"

    @property
    def owner_terms_name(self) -> str:
        """Per owner and term, how many of the owner's memories hold it (see
        :func:`_v15_owner_term_statistics`), unquoted."""
        return f"{self.table}_owner_terms"

    @property
    def owner_totals_name(self) -> str:
        """Per owner, how many memories have terms and their mean number, unquoted."""
        return f"{self.table}_owner_totals"

    @property
    def qualified_owner_terms(self) -> str:
        return qualified(self.schema, self.owner_terms_name)

    @property
    def qualified_owner_totals(self) -> str:
        return qualified(self.schema, self.owner_totals_name)

    @property
    def tenant_roles_name(self) -> str:
        """Which database role acts for which tenant (see :func:`_v16_tenant_roles`),
        unquoted."""
        return f"{self.table}_tenant_roles"

    @property
    def qualified_tenant_roles(self) -> str:
        return qualified(self.schema, self.tenant_roles_name)

    @property
    def backfills_name(self) -> str:
        """How far each online backfill got, per tenant (see :func:`_v17_backfills_per_table`),
        unquoted."""
        return f"{self.table}_backfills"

    @property
    def qualified_backfills(self) -> str:
        return qualified(self.schema, self.backfills_name)

    @property
    def qualified_term_stats(self) -> str:
        return qualified(self.schema, self.term_stats_name)

    @property
    def qualified_term_totals(self) -> str:
        return qualified(self.schema, self.term_totals_name)

    def terms_trigger_statement(self) -> str:
        """(Re)create the trigger computing ``terms`` with this layout's configuration."""
        # The configuration name matched TEXT_SEARCH_CONFIG_PATTERN and was looked up in
        # pg_ts_config before any DDL uses it.
        setter = qualified(self.schema, "pepperpy_set_terms")
        return (
            f"CREATE OR REPLACE TRIGGER {self.index_name('terms')} "
            f"BEFORE INSERT OR UPDATE OF content, indices ON {self.qualified_table} "
            f"FOR EACH ROW WHEN ({ROW_TRIGGERS_ON}) "
            f"EXECUTE FUNCTION {setter}('{self.text_search_config}')"
        )

    def index_name(self, suffix: str) -> str:
        return quote_ident(f"{self.table}_{suffix}")

    def qualified_index(self, suffix: str) -> str:
        return qualified(self.schema, f"{self.table}_{suffix}")

    @property
    def vector_column_type(self) -> str:
        # Both parts come from vector_type_for() and an int: no caller text reaches here.
        return f"{self.vector_type}({int(self.dimension)})"

    def _hnsw_on(self, table: str) -> str:
        """The part of an HNSW index's DDL after its name: on ``table``'s vectors, with this
        layout's operator class and build settings."""
        return (
            f"ON {table} USING hnsw (embedding {self.vector_ops}) "
            f"WITH (m = {int(self.hnsw_m)}, ef_construction = {int(self.hnsw_ef_construction)})"
        )

    def hnsw_index_statement(self) -> str:
        return (
            f"CREATE INDEX IF NOT EXISTS {self.index_name('embedding_idx')} "
            f"{self._hnsw_on(self.qualified_table)}"
        )

    # --- an owner's own vector index ------------------------------------------------------
    def owner_index_name(self, tenant: str, scope: str, scope_id: str) -> str:
        """The name of the vector index of one owner's memories (a digest of the owner: any
        owner id, whatever its characters, names a valid identifier)."""
        owner = "\x00".join((tenant, scope, scope_id)).encode()
        return f"{self.table}_own_{hashlib.sha256(owner).hexdigest()[:12]}"

    def owner_index_statement(self, tenant: str, scope: str, scope_id: str) -> Query:
        """Build the HNSW index of one owner's memories, without blocking writes: a search
        within that owner (planned for its values) walks it instead of the table's, so a
        large owner's nearest memories are found as in a table of its own."""
        return Query(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS "
            f"{quote_ident(self.owner_index_name(tenant, scope, scope_id))} "
            f"{self._hnsw_on(self.qualified_table)} "
            f"WHERE tenant = {text_literal(tenant)} AND scope = {text_literal(scope)} "
            f"AND scope_id = {text_literal(scope_id)}"
        )

    def drop_owner_index(self, tenant: str, scope: str, scope_id: str) -> Query:
        name = qualified(self.schema, self.owner_index_name(tenant, scope, scope_id))
        return Query(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")

    def owner_index_valid(self, tenant: str, scope: str, scope_id: str) -> Query:
        """Whether the owner's index exists and is valid (None: it does not exist; False: a
        build was interrupted and left it invalid)."""
        return Query(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
            [f"{self.schema}.{self.owner_index_name(tenant, scope, scope_id)}"],
        )

    @property
    def regclass(self) -> str:
        """The table's name as ``$n::regclass`` takes it (both parts validated)."""
        return f"{self.schema}.{self.table}"

    # --- DDL beyond migrations: index builds, reindexing, model changes --------------------
    def drop_vector_index(self) -> Query:
        return Query(f"DROP INDEX IF EXISTS {self.qualified_index('embedding_idx')}")

    @property
    def qualified_passages_index(self) -> str:
        return qualified(self.schema, self.passages_name + "_embedding_idx")

    def drop_passages_index(self) -> Query:
        return Query(f"DROP INDEX IF EXISTS {self.qualified_passages_index}")

    def build_vector_index(self, maintenance_work_mem: str) -> list[Query]:
        """Build the HNSW index in one pass, with more memory for this transaction only
        (run inside a transaction)."""
        return [
            Query("SELECT set_config('maintenance_work_mem', $1, true)", [maintenance_work_mem]),
            Query(self.hnsw_index_statement()),
        ]

    def gin_index_definitions(self) -> Query:
        """Each GIN index of the table (text, terms, metadata, hot fields): its qualified
        name and the statement that builds it, as the server has it."""
        return Query(
            "SELECT format('%I.%I', n.nspname, c.relname) AS name, "
            "pg_get_indexdef(i.indexrelid) AS definition FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_am a ON a.oid = c.relam "
            "WHERE i.indrelid = $1::regclass AND a.amname = 'gin' ORDER BY c.relname",
            [self.regclass],
        )

    def after_bulk_load(self) -> list[Query]:
        """Statements that make a freshly loaded table fast to search: merge the GIN pending
        lists (every search scans them until merged) and refresh the planner's statistics."""
        return [
            Query("SELECT gin_clean_pending_list($1::regclass)", [self.qualified_index(suffix)])
            for suffix in self.gin_indexes
        ] + [Query(f"ANALYZE {self.qualified_table}")]

    @property
    def gin_indexes(self) -> tuple[str, ...]:
        """Suffixes of the table's GIN indexes at its version."""
        full_text = ("tsv_idx",) if self.version < ONE_TEXT_VECTOR_VERSION else ()
        terms = ("terms_idx",) if self.version >= TERMS_VERSION else ()
        return full_text + GIN_INDEXES + terms

    def retype_embedding_column(self) -> list[Query]:
        """Give the embedding columns (memories', passages' and versions') this layout's
        type, dropping every stored vector (old versions keep their text, not a vector)."""
        tables = [self.qualified_table, self.qualified_passages]
        if self.version >= HISTORY_VERSION:
            tables.append(self.qualified_history)
        return [
            Query(
                f"ALTER TABLE {table} ALTER COLUMN embedding "
                f"TYPE {self.vector_column_type} USING NULL"
            )
            for table in tables
        ]

    def recompute_terms(self) -> list[Query]:
        """Compute every memory's terms again with this layout's configuration (and have the
        trigger use it from now on): the one parse of its text that word searches read."""
        return [
            *([Query(UNSAFE_TRIGGERS)] if self.distributed else []),
            Query(self.terms_trigger_statement()),
            Query(
                f"UPDATE {self.qualified_table} SET terms = CASE WHEN indices @> "
                f"ARRAY['contextual'] THEN {terms_function(self.schema)}"
                f"('{self.text_search_config}'::regconfig, content) END"
            ),
        ]

    def reindex_text_indexes(self) -> list[Query]:
        return [
            Query(f"REINDEX INDEX {self.qualified_index(suffix)}")
            for suffix in ("trgm_idx", "terms_idx")
        ]

    def tsvector_expression(self) -> str:
        """The generated full-text column of schemas 1 to 28 (migration 1 creates it, 29
        drops it: the terms hold the same words)."""
        # The configuration name matched TEXT_SEARCH_CONFIG_PATTERN and was looked up in
        # pg_ts_config before any DDL uses it.
        return (
            "CASE WHEN indices @> ARRAY['contextual'] "
            f"THEN to_tsvector('{self.text_search_config}'::regconfig, content) END"
        )


GIN_INDEXES = ("trgm_idx", "metadata_idx")
"""The GIN indexes every table has (with the terms' from :data:`TERMS_VERSION`, and the
generated full-text column's before :data:`ONE_TEXT_VECTOR_VERSION`)."""
GIN_PENDING_LIST_KB = 256
"""The GIN indexes' pending lists, in kB (see migration 2)."""
UNSAFE_TRIGGERS = "SET LOCAL citus.enable_unsafe_triggers = on"
"""Run first in a transaction that creates a trigger on a distributed table: Citus creates
it on the shards only when told it is safe there (ours touch the row itself, or rows of the
same memory, co-located)."""

TERMS_VERSION = 6

HISTORY_VERSION = 8

EXPIRY_REFRESHES_VERSION = 23

ONE_TEXT_VECTOR_VERSION = 29
"""The schema from which a memory's words are its terms alone (the generated ``tsv`` column
and its index dropped)."""

STATEMENT_VERSIONS_SETTING = "pepperpy.statement_versions"
"""Transaction setting: 'on' while a bulk merge numbers and records its own versions, computes
its terms and has checked its owners' quota (see :func:`_v20_statement_versions`)."""
# The WHEN clause of the row triggers that such a merge does the work of.
ROW_TRIGGERS_ON = f"coalesce(current_setting('{STATEMENT_VERSIONS_SETTING}', true), '') <> 'on'"


def terms_function(schema: str) -> str:
    """The qualified name of ``terms(config regconfig, content text) -> tsvector``."""
    return qualified(schema, "pepperpy_terms")
