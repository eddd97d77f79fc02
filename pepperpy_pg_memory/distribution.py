"""A store's tables on a Citus cluster: which column places each, and turning a store's
ordinary tables into distributed ones.

Each memory's owner (or, with ``distribution="tenant"``, its tenant) decides the node that
holds it. The tables that hold one row per memory or per owner — the memories, their
passages, history, read counts and per-owner term statistics — are distributed by that
column and co-located, so every statement given an owner runs on one node and the history
and quota triggers (which fire on the node holding the row) write to that node only. The
tables every node reads and no write needs — the schema's registry, backfill positions,
tenant role bindings and (by owner) the tenant-wide term statistics — are reference tables,
copied to every node: a node that is down fails their (rare) updates, never a memory's write.
With ``distribution="tenant"`` the tenant-wide statistics and backfill positions go with
their tenant instead.

Citus refuses to distribute a table with triggers unless ``citus.enable_unsafe_triggers`` is
on while it does: our triggers only touch rows of the same memory (co-located) or the row
itself, which is the case that setting exists for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import MemoryConfigurationError
from .identifiers import qualified, quote_ident
from .schema import (
    BACKFILLS,
    CITUS_READY_VERSION,
    CLIENT_SCHEMA_SETTING,
    EXPIRY_REFRESHES_VERSION,
    HEAP_FILLFACTOR,
    METADATA_INDEXES,
    MIGRATION_LOCK_KEY,
    REGISTRY,
    REGISTRY_VERSION_TABLE,
    UNSAFE_TRIGGERS,
    TableLayout,
    cluster_policy_statements,
    quota_function_statement,
    reset_trigger_plans,
    row_security,
    same_memory,
)
from .sql import Query, Session
from .types import Distribution, ProgressCallback

__all__ = [
    "Distribution",
    "DISTRIBUTION_COLUMNS",
    "TablePlacement",
    "placements",
    "citus_installed",
    "distribution_of",
    "check_distribution",
    "distribute",
    "UNSAFE_TRIGGERS",
    "PROPAGATE_SETTINGS",
    "worker_guard",
]

logger = logging.getLogger(__name__)

DISTRIBUTION_COLUMNS: dict[str, str] = {"owner": "scope_id", "tenant": "tenant"}
"""The column each distribution places memories by."""

PROPAGATE_SETTINGS = "citus.propagate_set_commands"
"""The setting by which Citus forwards SET LOCAL to the workers a transaction uses (the
only settings it forwards; see operations.lifecycle.transaction_settings)."""


@dataclass(frozen=True)
class TablePlacement:
    """How one table of a store is placed on the cluster."""

    name: str
    """Qualified (quoted) table name."""
    column: str | None
    """Its distribution column; None: a reference table (on every node)."""


def placements(layout: TableLayout, distribution: Distribution) -> list[TablePlacement]:
    """Every table of ``layout``'s store and its placement, in the order they are
    distributed (reference tables, then the memories, then what is co-located with them:
    a table with a foreign key follows the table it references)."""
    column = DISTRIBUTION_COLUMNS[distribution]
    by_tenant = distribution == "tenant"
    schema_wide = [REGISTRY, REGISTRY_VERSION_TABLE, BACKFILLS, METADATA_INDEXES]
    reference = [qualified(layout.schema, name) for name in schema_wide]
    reference.append(layout.qualified_tenant_roles)
    with_tenant = [
        layout.qualified_backfills,
        layout.qualified_term_stats,
        layout.qualified_term_totals,
    ]
    with_owner = [
        layout.qualified_table,
        layout.qualified_passages,
        layout.qualified_history,
        layout.qualified_access,
        layout.qualified_owner_terms,
        layout.qualified_owner_totals,
    ]
    if layout.version >= EXPIRY_REFRESHES_VERSION:
        with_owner.append(layout.qualified_refreshes)
    return [
        *(TablePlacement(name, None) for name in reference),
        *(TablePlacement(name, None) for name in with_tenant if not by_tenant),
        *(TablePlacement(name, column) for name in with_owner),
        *(TablePlacement(name, column) for name in with_tenant if by_tenant),
    ]


async def citus_installed(session: Session) -> bool:
    """Whether the database has the Citus extension."""
    return bool(
        await session.fetchval(
            Query("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
        )
    )


_PLACEMENT = """
    SELECT p.partmethod::text AS partmethod,
           column_to_column_name(p.logicalrelid, p.partkey) AS column_name
    FROM pg_dist_partition p WHERE p.logicalrelid = to_regclass($1)
"""


async def _placement_of(session: Session, table: str) -> tuple[str, str | None] | None:
    """(method, column) of a table Citus manages ('n': reference, 'h': hash); None if not."""
    row = await session.fetchrow(Query(_PLACEMENT, (table,)))
    if row is None:
        return None
    return row["partmethod"], row["column_name"]


async def distribution_of(session: Session, layout: TableLayout) -> Distribution | None:
    """How the store's memory table is distributed (None: an ordinary table)."""
    if not await citus_installed(session):
        return None
    placed = await _placement_of(session, layout.qualified_table)
    if placed is None or placed[0] != "h":
        return None
    for name, column in DISTRIBUTION_COLUMNS.items():
        if placed[1] == column:
            return name  # type: ignore[return-value]
    raise MemoryConfigurationError(
        f"table {layout.schema}.{layout.table} is distributed by {placed[1]!r}, which is "
        "neither the owner (scope_id) nor the tenant"
    )


async def check_distribution(
    session: Session, layout: TableLayout, wanted: Distribution | None
) -> Distribution | None:
    """The store's distribution, checked against the configured one; a new store (created
    by this start()) is distributed here. Returns the distribution in place."""
    current = await distribution_of(session, layout)
    if wanted is None or current == wanted:
        return current
    # Processes starting at once on a new store: one distributes it, the others then find
    # it done (the lock migrations take, held for the session: each table moves in a
    # transaction of its own).
    await session.execute(Query("SELECT pg_advisory_lock($1)", (MIGRATION_LOCK_KEY,)))
    try:
        return await _distribute_new(session, layout, wanted)
    finally:
        await session.execute(Query("SELECT pg_advisory_unlock($1)", (MIGRATION_LOCK_KEY,)))


async def _distribute_new(
    session: Session, layout: TableLayout, wanted: Distribution
) -> Distribution:
    current = await distribution_of(session, layout)
    if current == wanted:
        return current
    if not await citus_installed(session):
        raise MemoryConfigurationError(
            f"distribution={wanted!r} needs a Citus coordinator, and this server has no "
            "Citus extension: connect to the coordinator, or leave distribution unset",
            field="distribution",
        )
    if current is not None:
        raise MemoryConfigurationError(
            f"table {layout.schema}.{layout.table} is distributed by {current!r}, not "
            f"{wanted!r}: configure distribution={current!r}",
            field="distribution",
        )
    if await _holds_memories(session, layout):
        raise MemoryConfigurationError(
            f"table {layout.schema}.{layout.table} holds memories and is not distributed: "
            f"convert it with `pepperpy-memory distribute --distribution {wanted}` (with "
            "every process using it stopped), then start again",
            field="distribution",
        )
    await distribute(session, layout, wanted)
    return wanted


async def _holds_memories(session: Session, layout: TableLayout) -> bool:
    return bool(
        await session.fetchval(Query(f"SELECT EXISTS (SELECT 1 FROM {layout.qualified_table})"))
    )


def _distribute_statement(placement: TablePlacement, colocate_with: str) -> Query:
    if placement.column is None:
        return Query("SELECT create_reference_table($1::regclass)", [placement.name])
    return Query(
        "SELECT create_distributed_table($1::regclass, $2, colocate_with => $3)",
        [placement.name, placement.column, colocate_with],
    )


def _fold_refreshes(layout: TableLayout) -> list[Query]:
    """Write the TTL refreshes kept beside the memories into the memories' rows: on a
    cluster a refresh rewrites the row (see TableLayout.expiry_refreshes), and a refresh
    left beside it would no longer keep the memory live."""
    table, refreshes = layout.qualified_table, layout.qualified_refreshes
    return [
        Query(
            f"UPDATE {table} m SET expires_at = refresh.expires_at FROM {refreshes} refresh "
            f"WHERE {same_memory('refresh', 'm')} AND refresh.refreshed_from = m.expires_at "
            "AND refresh.expires_at > m.expires_at"
        ),
        Query(f"DELETE FROM {refreshes}"),
    ]


async def distribute(
    session: Session,
    layout: TableLayout,
    distribution: Distribution,
    progress: ProgressCallback | None = None,
) -> int:
    """Distribute the store's tables (and the schema's registry) by ``distribution``.

    Each table moves in its own transaction and a table already placed as wanted is
    skipped, so an interrupted run resumes where it stopped; the rows are copied to the
    nodes by Citus, none is rewritten. Returns the tables distributed now. ``progress``
    gets (tables done, tables in all) after each.
    """
    if not await citus_installed(session):
        raise MemoryConfigurationError(
            "this server has no Citus extension: run this against a Citus coordinator",
            field="distribution",
        )
    plan = placements(layout, distribution)
    if layout.version >= EXPIRY_REFRESHES_VERSION and (
        await _placement_of(session, layout.qualified_table) is None
    ):
        async with session.transaction():
            for statement in _fold_refreshes(layout):
                await session.execute(statement)
            # There a refresh rewrites the row: new pages keep room for it, as schema 21
            # gave every table (one server's are filled since schema 28).
            await session.execute(
                Query(f"ALTER TABLE {layout.qualified_table} SET (fillfactor = {HEAP_FILLFACTOR})")
            )
    enabled, _ = await row_security(session, layout.qualified_table)
    if enabled:
        # Citus copies each table's policies to its shards, and refuses the single server's
        # (they read the role bindings in a subquery): the cluster's form replaces them.
        async with session.transaction():
            for policy in await cluster_policy_statements(session, layout):
                await session.execute(Query(policy))
    moved = 0
    for done, placement in enumerate(plan, start=1):
        placed = await _placement_of(session, placement.name)
        if placed is not None:
            method, column = placed
            if (method == "n") != (placement.column is None) or (
                placement.column is not None and column != placement.column
            ):
                raise MemoryConfigurationError(
                    f"{placement.name} is already distributed differently "
                    f"(method {method!r}, column {column!r})",
                    field="distribution",
                )
        else:
            # The first distributed table starts the co-location group the others join.
            colocate_with = (
                "default" if placement.name == layout.qualified_table else (layout.qualified_table)
            )
            statement = _distribute_statement(placement, colocate_with)
            _, forced = await row_security(session, placement.name)
            async with session.transaction():
                await session.execute(Query(UNSAFE_TRIGGERS))
                # Citus copies the rows a table holds into its shards, and the shards'
                # triggers would fire on them (numbering versions again, recording history
                # twice): they are off for the copy, in this transaction only. So is
                # row-level security for the tables' owner (it refuses a COPY): every row
                # moves, whatever its tenant.
                await session.execute(Query(f"ALTER TABLE {placement.name} DISABLE TRIGGER USER"))
                if forced:
                    await session.execute(
                        Query(f"ALTER TABLE {placement.name} NO FORCE ROW LEVEL SECURITY")
                    )
                await session.execute(statement)
                if forced:
                    await session.execute(
                        Query(f"ALTER TABLE {placement.name} FORCE ROW LEVEL SECURITY")
                    )
                await session.execute(Query(f"ALTER TABLE {placement.name} ENABLE TRIGGER USER"))
            logger.info("distributed %s", placement.name)
            moved += 1
        if progress is not None:
            progress(done, len(plan))
    async with session.transaction():
        await session.execute(Query(UNSAFE_TRIGGERS))
        for guard in worker_guard(layout):
            await session.execute(Query(guard))
        # On a cluster nothing reads the TTL refreshes (see TableLayout.expiry_refreshes).
        await session.execute(Query(quota_function_statement(layout)))
        # Citus plans no distributed query a generic plan leaves with unknown parameters.
        await session.execute(Query(reset_trigger_plans(layout)))
    return moved


WORKERS_GUARD_VERSION = CITUS_READY_VERSION
"""The oldest schema a process may speak to write to a distributed store."""


def worker_guard(layout: TableLayout) -> list[str]:
    """The guard against processes of an older release, as it runs on a cluster.

    The schema's own guard (schema.migrations._old_client_guard) is a statement trigger that
    knows this library's sessions by their application name; on a cluster the statements run
    on the workers, in Citus's sessions, under Citus's name, and that guard passes everything.
    Our sessions send the schema they speak in every transaction (``SET LOCAL``, which Citus
    forwards): a row written by a session that says an older one is refused on the worker.
    Sessions that say nothing (psql, scripts) pass, as on one server."""
    function = qualified(layout.schema, f"{_WORKERS_GUARD}_v{WORKERS_GUARD_VERSION}")
    required = int(WORKERS_GUARD_VERSION)
    return [
        f"""
        CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $guard$
        BEGIN
            IF coalesce(nullif(current_setting('{CLIENT_SCHEMA_SETTING}', true), ''),
                        '{required}')::int < {required} THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'object_not_in_prerequisite_state',
                    MESSAGE = format('%I.%I is distributed and speaks schema {required} or '
                        'later; this process runs an older release of pepperpy-pg-memory '
                        '(schema %s) and may not write to it',
                        TG_TABLE_SCHEMA, TG_TABLE_NAME,
                        current_setting('{CLIENT_SCHEMA_SETTING}', true)),
                    HINT = 'Stop every process running the older release and upgrade it.';
            END IF;
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END
        $guard$
        """,
        f"CREATE OR REPLACE TRIGGER {quote_ident(_WORKERS_GUARD)} "
        f"BEFORE INSERT OR UPDATE OR DELETE ON {layout.qualified_table} "
        f"FOR EACH ROW EXECUTE FUNCTION {function}()",
    ]


_WORKERS_GUARD = "pepperpy_reject_old_clients_on_workers"
