"""Applying the migrations: the extensions, the registry, then the table's own migrations in
one transaction under an advisory lock (any number of processes may start at once); reading a
table's recorded layout back; and the metadata indexes made on demand."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

import asyncpg

from ..errors import MemoryConfigurationError, MemorySchemaError
from ..filters import FieldKind, field_type, typed_field
from ..identifiers import qualified, quote_ident, quote_name
from ..sql import Query, Session
from .layout import MIGRATION_LOCK_KEY, UNSAFE_TRIGGERS, TableLayout
from .migrations import (
    MIGRATIONS,
    PASSAGES_VERSION,
    SCHEMA_VERSION,
    TENANT_POLICY,
    cluster_row_level_security_statements,
    row_level_security_statements,
    tenant_tables,
)
from .registry import (
    METADATA_INDEXES,
    REGISTRY_MIGRATIONS,
    REGISTRY_VERSION_TABLE,
    registry_statement,
)

logger = logging.getLogger(__name__)


async def _migrate_registry(session: Session, schema: str) -> None:
    versions = qualified(schema, REGISTRY_VERSION_TABLE)
    await session.execute(
        Query(f"CREATE TABLE IF NOT EXISTS {versions} (version integer NOT NULL)")
    )
    current = await session.fetchval(Query(f"SELECT max(version) FROM {versions}")) or 0
    for version in range(current + 1, len(REGISTRY_MIGRATIONS) + 1):
        for statement in REGISTRY_MIGRATIONS[version - 1](schema):
            await session.execute(Query(statement))
    if current < len(REGISTRY_MIGRATIONS):
        await session.execute(Query(f"DELETE FROM {versions}"))
        await session.execute(
            Query(f"INSERT INTO {versions} VALUES ($1)", (len(REGISTRY_MIGRATIONS),))
        )


async def _ensure_extensions(session: Session) -> None:
    for extension, purpose in (("vector", "pgvector"), ("pg_trgm", "pg_trgm")):
        # Asked first: on a Citus coordinator CREATE EXTENSION IF NOT EXISTS checks that the
        # role owns the extension even when it exists (a managed cluster's application
        # role never does).
        exists = Query(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1)", (extension,)
        )
        if await session.fetchval(exists):
            continue
        try:
            # Under the advisory lock: concurrent CREATE EXTENSION calls race otherwise.
            await session.execute(Query(f"CREATE EXTENSION IF NOT EXISTS {extension}"))
        except asyncpg.InsufficientPrivilegeError as exc:
            raise MemoryConfigurationError(
                f"the {purpose} extension is not enabled in this database and this user may not "
                f"enable it: ask an administrator to run CREATE EXTENSION {extension};"
            ) from exc
        except (asyncpg.UndefinedFileError, asyncpg.FeatureNotSupportedError) as exc:
            raise MemoryConfigurationError(
                f"the {purpose} extension is not installed on the server: install it "
                f"(e.g. the pgvector/pgvector Docker image) or use the embedded server"
            ) from exc
        except asyncpg.PostgresError as exc:
            if "extension" in str(exc) and "is not available" in str(exc):
                raise MemoryConfigurationError(
                    f"the {purpose} extension is not installed on the server: install it "
                    f"(e.g. the pgvector/pgvector Docker image) or use the embedded server"
                ) from exc
            raise


async def text_search_config_exists(session: Session, name: str) -> bool:
    """Whether the server has the text search configuration ``name`` (checked before any DDL
    interpolates it)."""
    return bool(
        await session.fetchval(
            Query("SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = $1)", (name,))
        )
    )


async def vector_schema(session: Session) -> str:
    """The schema pgvector's types live in (its codecs are registered from there)."""
    return str(
        await session.fetchval(
            Query(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
            )
        )
    )


async def ensure_database(session: Session, name: str) -> None:
    """Create the database ``name`` unless it exists (another process may race us to it)."""
    if await session.fetchval(
        Query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", (name,))
    ):
        return
    try:
        # CREATE DATABASE takes no parameters: the name is quoted instead.
        await session.execute(Query(f"CREATE DATABASE {quote_name(name)}"))
    except asyncpg.DuplicateDatabaseError:
        pass  # another process created it first


def metadata_index_name(layout: TableLayout, path: tuple[str, ...], kind: str) -> str:
    """The unquoted name of the expression index on a metadata field."""
    digest = hashlib.sha1(("\x00".join(path) + "\x00" + kind).encode()).hexdigest()[:10]
    return f"{layout.table}_meta_{digest}"


def metadata_statistics_name(layout: TableLayout, path: tuple[str, ...]) -> str:
    """The unquoted name of the statistics on a metadata field's JSON type."""
    digest = hashlib.sha1("\x00".join(path).encode()).hexdigest()[:10]
    return f"{layout.table}_mtype_{digest}"


async def ensure_fillfactor(session: Session, layout: TableLayout, fillfactor: int) -> bool:
    """Give the memory table's new pages ``fillfactor`` (PostgresConfig.fillfactor) unless
    they have it; whether it changed. A storage parameter: instant, for pages written from
    now on (``VACUUM FULL`` rewrites the others)."""
    if not 10 <= fillfactor <= 100:
        raise MemoryConfigurationError(f"fillfactor is {fillfactor}: 10 to 100", field="fillfactor")
    options = await session.fetchval(
        Query("SELECT reloptions FROM pg_class WHERE oid = $1::regclass", (layout.qualified_table,))
    )
    if f"fillfactor={fillfactor}" in (options or []):
        return False
    owner = await _owner_if_not_ours(session, layout)
    if owner is not None:
        # A tuning of pages, not a condition of the store: a store that may not change it
        # works as it is.
        logger.warning(
            "table %s is owned by %s: its fillfactor stays as it is (%d asked); its owner may "
            "run ALTER TABLE ... SET (fillfactor = %d)",
            layout.qualified_table,
            owner,
            fillfactor,
            fillfactor,
        )
        return False
    async with session.transaction():
        await session.execute(Query("SELECT pg_advisory_xact_lock($1)", (MIGRATION_LOCK_KEY,)))
        # An int checked above: no caller text reaches the statement.
        await session.execute(
            Query(f"ALTER TABLE {layout.qualified_table} SET (fillfactor = {int(fillfactor)})")
        )
    return True


async def ensure_metadata_indexes(
    session: Session,
    layout: TableLayout,
    fields: tuple[tuple[tuple[str, ...], FieldKind], ...],
) -> list[str]:
    """Give each metadata field of ``fields`` its expression index (see
    :func:`~.filters.typed_field`) unless it has one, recording it; returns the names created.

    Built under the migration lock, in one transaction (a plain build: it holds off writes to
    the table while it runs, about 0.1 s per 100,000 rows), with statistics on the field's
    JSON type; then the table is analysed so that the planner knows the field's distribution.
    Indexes are never dropped here.
    """
    if not fields:
        return []
    registry = qualified(layout.schema, METADATA_INDEXES)
    created: list[str] = []
    async with session.transaction():
        await session.execute(Query("SELECT pg_advisory_xact_lock($1)", (MIGRATION_LOCK_KEY,)))
        for path, kind in fields:
            name = metadata_index_name(layout, path, kind)
            recorded = await session.fetchval(
                Query(
                    f"SELECT EXISTS (SELECT 1 FROM {registry} WHERE table_name = $1 "
                    "AND path = $2 AND kind = $3)",
                    (layout.table, list(path), kind),
                )
            )
            if recorded:
                continue
            expression = typed_field("metadata", path, kind)
            await session.execute(
                Query(
                    f"CREATE INDEX IF NOT EXISTS {quote_ident(name)} "
                    f"ON {layout.qualified_table} ({expression})"
                )
            )
            # Range filters test the value's type too; without statistics on it the planner
            # guesses 0.5% of rows pass and reads half the table through the index.
            statistics = qualified(layout.schema, metadata_statistics_name(layout, path))
            await session.execute(
                Query(
                    f"CREATE STATISTICS IF NOT EXISTS {statistics} "
                    f"ON ({field_type('metadata', path)}) FROM {layout.qualified_table}"
                )
            )
            await session.execute(
                Query(
                    f"INSERT INTO {registry} (table_name, path, kind, index_name) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    (layout.table, list(path), kind, name),
                )
            )
            created.append(name)
        if created:
            await session.execute(Query(f"ANALYZE {layout.qualified_table}"))
    return created


async def migrate(
    session: Session, wanted: TableLayout, *, row_level_security: bool = False
) -> TableLayout:
    """Create or upgrade the table described by ``wanted``; return its recorded layout.

    The recorded dimension and text search configuration win over ``wanted`` for an existing
    table: changing them is a reindex, not a migration.
    """
    async with session.transaction():
        await session.execute(Query("SELECT pg_advisory_xact_lock($1)", (MIGRATION_LOCK_KEY,)))
        owner = await _owner_if_not_ours(session, wanted)
        if owner is not None:
            return await _recorded_layout(session, wanted, owner, row_level_security)
        await _ensure_extensions(session)
        await session.execute(Query(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(wanted.schema)}"))
        await session.execute(Query(registry_statement(wanted.schema)))
        await _migrate_registry(session, wanted.schema)
        if not await text_search_config_exists(session, wanted.text_search_config):
            raise MemoryConfigurationError(
                f"text search configuration {wanted.text_search_config!r} does not exist on the "
                "server (see \\dF in psql for the available ones)",
                field="text_search_config",
            )
        row = await session.fetchrow(
            Query(
                f"SELECT schema_version, dimension, vector_type, text_search_config, embedder, "
                f"distance FROM {wanted.registry} WHERE table_name = $1 FOR UPDATE",
                (wanted.table,),
            )
        )
        if row is None:
            if await _exists(session, f"{wanted.schema}.{wanted.table}"):
                raise MemorySchemaError(
                    f"table {wanted.schema}.{wanted.table} exists but was not created by "
                    "pepperpy-pg-memory; choose another `table` or drop it"
                )
            layout = wanted
            await session.execute(
                Query(
                    f"INSERT INTO {wanted.registry} (table_name, schema_version, dimension, "
                    "vector_type, text_search_config, embedder, distance) "
                    "VALUES ($1, 0, $2, $3, $4, $5, $6)",
                    (
                        wanted.table,
                        wanted.dimension,
                        wanted.vector_type,
                        wanted.text_search_config,
                        wanted.embedder,
                        wanted.distance,
                    ),
                )
            )
        else:
            layout = _layout_from(row, wanted)
            if layout.embedder is None and wanted.embedder is not None:
                # A table from before identities were recorded adopts the current model.
                await session.execute(
                    Query(
                        f"UPDATE {wanted.registry} SET embedder = $2 WHERE table_name = $1",
                        (wanted.table, wanted.embedder),
                    )
                )
                layout = replace(layout, embedder=wanted.embedder)
        if layout.version > SCHEMA_VERSION:
            raise MemorySchemaError(
                f"table {wanted.schema}.{wanted.table} has schema version {layout.version}, "
                f"newer than this library's {SCHEMA_VERSION}: upgrade pepperpy-pg-memory"
            )
        if layout.version < SCHEMA_VERSION and await _citus_installed(session):
            # A migration may (re)create a trigger on a distributed table.
            await session.execute(Query(UNSAFE_TRIGGERS))
        for version in range(layout.version + 1, SCHEMA_VERSION + 1):
            logger.info("applying migration %d to %s.%s", version, layout.schema, layout.table)
            for statement in MIGRATIONS[version - 1](layout):
                await session.execute(Query(statement))
        # Restores a vector index an interrupted bulk reindex dropped. Asked of the catalog
        # first: CREATE INDEX IF NOT EXISTS locks the table against writes before it looks,
        # and holding the first table's lock while queueing for the second's deadlocked with
        # other processes' writes.
        if layout.version >= 1 and not await _exists(
            session, layout.qualified_index("embedding_idx")
        ):
            await session.execute(Query(layout.hnsw_index_statement()))
        passages_index = layout.qualified_passages_index
        if layout.version >= PASSAGES_VERSION and not await _exists(session, passages_index):
            await session.execute(Query(layout.passages_hnsw_statement()))
        if layout.version < SCHEMA_VERSION:
            await session.execute(
                Query(
                    f"UPDATE {wanted.registry} SET schema_version = $2, updated_at = now() "
                    "WHERE table_name = $1",
                    (wanted.table, SCHEMA_VERSION),
                )
            )
            layout = replace(layout, version=SCHEMA_VERSION)
        if row_level_security and not await _row_level_security_in_place(session, layout):
            for statement in await tenant_policy_statements(session, layout):
                await session.execute(Query(statement))
        return layout


async def tenant_policy_statements(session: Session, layout: TableLayout) -> list[str]:
    """The statements that put row-level security on the store's tables: for a store
    distributed on a Citus cluster, :func:`cluster_policy_statements` (which
    ``distribution.distribute`` also applies before it distributes a store under
    row-level security)."""
    if not await _citus_installed(session) or not await session.fetchval(
        Query(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass($1))",
            (layout.qualified_table,),
        )
    ):
        return row_level_security_statements(layout)
    return await cluster_policy_statements(session, layout)


async def cluster_policy_statements(session: Session, layout: TableLayout) -> list[str]:
    """Row-level security in the form a Citus cluster runs, with the roles bound so far
    (see cluster_row_level_security_statements)."""
    return cluster_row_level_security_statements(layout, await tenant_bindings(session, layout))


async def tenant_bindings(session: Session, layout: TableLayout) -> list[tuple[str, str]]:
    """The (role, tenant) pairs bound so far (all of them for the tables' owner; a bound
    role reads its own)."""
    rows = await session.fetch(
        Query(f"SELECT role_name, tenant FROM {layout.qualified_tenant_roles} ORDER BY 1")
    )
    return [(row["role_name"], row["tenant"]) for row in rows]


async def row_security(session: Session, table: str) -> tuple[bool, bool]:
    """Whether ``table`` has row-level security enabled, and whether it binds the table's
    owner too (FORCE)."""
    row = await session.fetchrow(
        Query(
            "SELECT relrowsecurity AS enabled, relforcerowsecurity AS forced FROM pg_class "
            "WHERE oid = to_regclass($1)",
            (table,),
        )
    )
    return (False, False) if row is None else (bool(row["enabled"]), bool(row["forced"]))


async def _exists(session: Session, relation: str) -> bool:
    return bool(await session.fetchval(Query("SELECT to_regclass($1) IS NOT NULL", (relation,))))


async def _citus_installed(session: Session) -> bool:
    return bool(
        await session.fetchval(
            Query("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
        )
    )


def _layout_from(row: asyncpg.Record, wanted: TableLayout) -> TableLayout:
    """The layout the registry's ``row`` records for the table ``wanted`` names."""
    return TableLayout(
        schema=wanted.schema,
        table=wanted.table,
        dimension=row["dimension"],
        vector_type=row["vector_type"],
        text_search_config=row["text_search_config"],
        hnsw_m=wanted.hnsw_m,
        hnsw_ef_construction=wanted.hnsw_ef_construction,
        version=row["schema_version"],
        embedder=row["embedder"],
        distance=_same_distance(row["distance"], wanted),
    )


def _same_distance(recorded: str, wanted: TableLayout) -> str:
    """The table's distance, if it is the one wanted: it is its indexes' operator class."""
    if recorded != wanted.distance:
        raise MemoryConfigurationError(
            f"table {wanted.schema}.{wanted.table} compares vectors by {recorded!r} (its "
            f"indexes' operator class), not {wanted.distance!r}: configure "
            f"distance={recorded!r}, or use another table",
            field="distance",
        )
    return recorded


async def _owner_if_not_ours(session: Session, wanted: TableLayout) -> str | None:
    """The role owning the table, if it exists and the session's role cannot act as it."""
    owner: str | None = await session.fetchval(
        Query(
            "SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = to_regclass($1) "
            "AND NOT pg_has_role(current_user, c.relowner, 'USAGE')",
            (wanted.qualified_table,),
        )
    )
    return owner


async def _recorded_layout(
    session: Session, wanted: TableLayout, owner: str, row_level_security: bool
) -> TableLayout:
    """The layout of a table another role owns (a tenant's role, say): such a role may use the
    table but not change it, so the table must be as this release wants it."""
    row = await session.fetchrow(
        Query(
            f"SELECT schema_version, dimension, vector_type, text_search_config, embedder, "
            f"distance FROM {wanted.registry} WHERE table_name = $1",
            (wanted.table,),
        )
    )
    if row is None or row["schema_version"] != SCHEMA_VERSION:
        found = "no" if row is None else row["schema_version"]
        raise MemorySchemaError(
            f"table {wanted.schema}.{wanted.table} has schema version {found}, this release "
            f"uses {SCHEMA_VERSION}, and it belongs to role {owner!r}: start a store as that "
            "role first (it applies the migrations)"
        )
    layout = _layout_from(row, wanted)
    if row_level_security and not await _row_level_security_in_place(session, layout):
        raise MemoryConfigurationError(
            f"row_level_security=True, but table {wanted.schema}.{wanted.table} has no "
            f"row-level security of this release: start a store with row_level_security=True "
            f"as its owner, role {owner!r}, first",
            field="row_level_security",
        )
    return layout


async def _row_level_security_in_place(session: Session, layout: TableLayout) -> bool:
    """Whether every table of ``layout`` already has forced row-level security and our policy.

    The statements take an exclusive lock on each table; run at every start they would queue
    behind (and deadlock with) other processes' reads and writes for nothing. (A release that
    changes the policy must give it a new name.)
    """
    tables = [f"{layout.schema}.{name}" for name in tenant_tables(layout)]
    in_place = await session.fetchval(
        Query(
            """
        SELECT count(*) FROM pg_class c
        WHERE c.oid = ANY(SELECT to_regclass(t) FROM unnest($1::text[]) t)
          AND c.relrowsecurity AND c.relforcerowsecurity
          AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = $2)
        """,
            (tables, f"{layout.table}_{TENANT_POLICY}"),
        )
    )
    return bool(in_place == len(tables))
