"""The one place that knows the schema: the memory table, its indexes, and how they evolve.

The schema is an append-only list of migrations. Each is a function of the table's recorded
layout (:class:`TableLayout`) returning idempotent statements. :func:`migrate` applies the ones a
table has not had yet, inside one transaction holding an advisory lock, so that any number of
processes may start against a fresh database at once. Never edit a released migration: append.

A registry table, ``pepperpy_memory_tables``, in the same schema records per memory table its
schema version, the embedding dimension and vector type, and the text search configuration.

The package: :mod:`.layout` (what a table looks like), :mod:`.migrations` (how it came to),
:mod:`.registry` (the tables every memory table shares) and :mod:`.runner` (applying them).
The names below are what the rest of the library uses.
"""

from __future__ import annotations

from ..limits import MAX_KEY_BYTES, MAX_SCOPE_ID_BYTES, MAX_TENANT_BYTES
from .layout import (
    DISTANCES,
    EXPIRY_REFRESHES_VERSION,
    HISTORY_VERSION,
    MAX_INDEXED_DIMENSION,
    MIGRATION_LOCK_KEY,
    REGISTRY,
    STATEMENT_VERSIONS_SETTING,
    TableLayout,
    terms_function,
    vector_type_for,
)
from .migrations import (
    APPLICATION_NAME,
    BACKFILLS_PER_TABLE_VERSION,
    CITUS_READY_VERSION,
    CLIENT_SCHEMA_SETTING,
    HISTORY_ACTOR_SETTING,
    HISTORY_OPERATION_SETTING,
    HISTORY_REASON_SETTING,
    HISTORY_SETTING,
    IDENTITY_COLUMNS,
    IMPORTING_SETTING,
    MIGRATIONS,
    OWNER_LOCK_CLASS,
    OWNER_TERMS_VERSION,
    QUOTA_SETTING,
    RECORDING,
    SCHEMA_VERSION,
    STATEMENT_VERSIONS_VERSION,
    TENANT_SETTING,
    VERSION_CONTENT_COLUMNS,
    VERSIONED_COLUMNS,
    bind_tenant_role,
    dedupe_identifiers_function,
    expired,
    expiry,
    grant_tenant_statements,
    live,
    normalized_function,
    quota_function_statement,
    refreshed,
    row_level_security_statements,
    same_memory,
    session_tenant,
)
from .registry import (
    BACKFILLS,
    METADATA_INDEXES,
    REGISTRY_MIGRATIONS,
    REGISTRY_VERSION_TABLE,
    registry_statement,
)
from .runner import (
    ensure_database,
    ensure_fillfactor,
    ensure_metadata_indexes,
    metadata_index_name,
    metadata_statistics_name,
    migrate,
    text_search_config_exists,
    vector_schema,
)

__all__ = [
    "TableLayout",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "migrate",
    "vector_type_for",
    "MAX_INDEXED_DIMENSION",
    "TENANT_SETTING",
    "CLIENT_SCHEMA_SETTING",
    "APPLICATION_NAME",
    "IDENTITY_COLUMNS",
    "expired",
    "expiry",
    "live",
    "refreshed",
    "same_memory",
    "MAX_KEY_BYTES",
    "MAX_SCOPE_ID_BYTES",
    "MAX_TENANT_BYTES",
    "row_level_security_statements",
    "BACKFILLS",
    "terms_function",
    "ensure_fillfactor",
    "ensure_metadata_indexes",
    "metadata_index_name",
    "metadata_statistics_name",
    "EXPIRY_REFRESHES_VERSION",
    "HISTORY_VERSION",
    "OWNER_TERMS_VERSION",
    "BACKFILLS_PER_TABLE_VERSION",
    "HISTORY_SETTING",
    "IMPORTING_SETTING",
    "RECORDING",
    "STATEMENT_VERSIONS_SETTING",
    "STATEMENT_VERSIONS_VERSION",
    "QUOTA_SETTING",
    "quota_function_statement",
    "OWNER_LOCK_CLASS",
    "HISTORY_OPERATION_SETTING",
    "HISTORY_ACTOR_SETTING",
    "HISTORY_REASON_SETTING",
    "VERSIONED_COLUMNS",
    "VERSION_CONTENT_COLUMNS",
    "DISTANCES",
    "CITUS_READY_VERSION",
    "METADATA_INDEXES",
    "MIGRATION_LOCK_KEY",
    "REGISTRY",
    "REGISTRY_MIGRATIONS",
    "REGISTRY_VERSION_TABLE",
    "bind_tenant_role",
    "dedupe_identifiers_function",
    "ensure_database",
    "grant_tenant_statements",
    "normalized_function",
    "registry_statement",
    "session_tenant",
    "text_search_config_exists",
    "vector_schema",
]
