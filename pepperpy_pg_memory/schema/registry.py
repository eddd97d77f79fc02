"""The registry tables that every memory table of a schema shares (which tables exist, their
embedder and layout, the online backfills' positions, the metadata indexes), and their own
append-only migrations."""

from __future__ import annotations

from collections.abc import Callable

from ..identifiers import qualified
from .layout import REGISTRY


def registry_statement(schema: str) -> str:
    return f"""
        CREATE TABLE IF NOT EXISTS {qualified(schema, REGISTRY)} (
            table_name          text PRIMARY KEY,
            schema_version      integer NOT NULL,
            dimension           integer NOT NULL,
            vector_type         text NOT NULL,
            text_search_config  text NOT NULL,
            reindex_cursor      text,
            updated_at          timestamptz NOT NULL DEFAULT now()
        )
    """


REGISTRY_VERSION_TABLE = "pepperpy_memory_registry_version"
"""One row per schema: the version of the registry table's own layout."""


def _registry_v1_embedder(schema: str) -> list[str]:
    # Which model's vectors a table holds: its name and dimension, so that a store started
    # with another model of the same dimension cannot mix two models' vectors in one index.
    return [f"ALTER TABLE {qualified(schema, REGISTRY)} ADD COLUMN IF NOT EXISTS embedder text"]


BACKFILLS = "pepperpy_memory_backfills"
"""Per table, backfill and tenant: how far an online backfill got (see backfill.py)."""


def _registry_v2_backfills(schema: str) -> list[str]:
    # Where each online backfill stands, so that it resumes after a crash or a restart.
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {qualified(schema, BACKFILLS)} (
            table_name   text NOT NULL,
            name         text NOT NULL,
            tenant       text NOT NULL,
            position     text[],
            rows_done    bigint NOT NULL DEFAULT 0,
            started_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            finished_at  timestamptz,
            PRIMARY KEY (table_name, name, tenant)
        )
        """
    ]


METADATA_INDEXES = "pepperpy_memory_metadata_indexes"
"""Per table: the metadata fields given an expression index (see ensure_metadata_indexes)."""


def _registry_v3_metadata_indexes(schema: str) -> list[str]:
    # Indexes made from configuration are recorded, so that they are known as ours and are
    # never dropped because a later configuration stopped naming them.
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {qualified(schema, METADATA_INDEXES)} (
            table_name  text NOT NULL,
            path        text[] NOT NULL,
            kind        text NOT NULL,
            index_name  text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (table_name, path, kind)
        )
        """
    ]


REGISTRY_TABLES = (REGISTRY, REGISTRY_VERSION_TABLE, METADATA_INDEXES)
"""The tables of a schema that describe its memory tables (all but the backfill positions,
which stores write)."""


def _registry_v4_distance(schema: str) -> list[str]:
    # How a table's vectors are compared, chosen when it is created (its indexes' operator
    # class): cosine, as every table before.
    return [
        f"ALTER TABLE {qualified(schema, REGISTRY)} "
        "ADD COLUMN IF NOT EXISTS distance text NOT NULL DEFAULT 'cosine'"
    ]


REGISTRY_MIGRATIONS: list[Callable[[str], list[str]]] = [
    _registry_v1_embedder,
    _registry_v2_backfills,
    _registry_v3_metadata_indexes,
    _registry_v4_distance,
]
"""The registry's own migrations (append-only), applied before the tables' migrations."""
