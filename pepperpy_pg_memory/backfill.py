"""Online backfills: work that touches every row of a table, done after ``start()`` in small
batches instead of inside a migration.

A migration may add a column instantly; filling it for existing rows rewrites them, which must
not happen inside ``start()`` (a large table would keep every process waiting). Instead a
:class:`Backfill` names the rows still to do and the statement that does them; :func:`run`
walks the tenant's rows in identity order (keyset pagination on the primary key), one batch
per transaction, and records its position in the table's backfill positions in the same
transaction, so a crash loses at most the batch under way and the next run resumes after the
last committed one. Several processes may run the same backfill: each batch locks the
backfill's row, so they take turns. Readers must stay correct while rows are pending (e.g.
contextual search parses the text of rows without terms as it reads them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .database import Database
from .history import repeats_current_vector
from .schema import TableLayout, terms_function
from .sql import Query, Session
from .types import MANAGED_FIELD, ProgressCallback

__all__ = [
    "Backfill",
    "TERMS",
    "MANAGED",
    "HISTORY_VECTORS",
    "on_memory_rows",
    "BACKFILLS_TO_RUN",
    "REEMBED",
    "is_finished",
    "finish_if_idle",
    "run",
    "saved_position",
    "save_position",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backfill:
    """One kind of row-by-row work on a memory table (or on what it keeps beside its rows)."""

    name: str
    """Its name in the registry (stable: it keys the saved position)."""
    pending: Callable[[TableLayout], str]
    """A condition on the memory row ``m`` that holds while the memory still needs the work."""
    change: Callable[[TableLayout], str]
    """An UPDATE that does the work for the memories of the batch that need it (``batch b``:
    their scope, scope_id and key; $1 the tenant), RETURNING a row per memory it changed."""
    searched: bool = True
    """Whether searches must allow for memories still pending (see :attr:`Started.backfilling`)."""


def on_memory_rows(name: str, pending: str, assignment: Callable[[TableLayout], str]) -> Backfill:
    """A backfill that sets ``assignment`` (a ``SET`` list on ``m``) on the memory rows for
    which ``pending`` holds."""

    def change(layout: TableLayout) -> str:
        return f"""
            UPDATE {layout.qualified_table} m SET {assignment(layout)}
            FROM batch b
            WHERE m.tenant = $1 AND (m.scope, m.scope_id, m.key) = (b.scope, b.scope_id, b.key)
              AND {pending}
            RETURNING 1"""

    return Backfill(name, lambda layout: pending, change)


def _terms_assignment(layout: TableLayout) -> str:
    # The configuration name was validated and looked up before any DDL used it.
    return (
        f"terms = {terms_function(layout.schema)}"
        f"('{layout.text_search_config}'::regconfig, m.content)"
    )


TERMS = on_memory_rows(
    "terms", "m.terms IS NULL AND m.indices @> ARRAY['contextual']", _terms_assignment
)
"""Contextual terms (schema version 6) for memories written before the column existed."""

# How the adapters' records were told apart before they carried MANAGED_FIELD: the LangChain
# chat history's keys and kind, the LangGraph store's namespace field.
_LEGACY_CHAT = "(m.metadata ->> 'kind' = 'chat_message' AND starts_with(m.key, 'chat:'))"
_LEGACY_LANGGRAPH = "m.metadata ? 'lg_namespace'"


def _managed_assignment(layout: TableLayout) -> str:
    # Metadata only: updated_at stays, so the history sees bookkeeping, not a new version.
    adapter = f"CASE WHEN {_LEGACY_CHAT} THEN 'langchain-chat-history' ELSE 'langgraph-store' END"
    return f"metadata = m.metadata || jsonb_build_object('{MANAGED_FIELD}', {adapter})"


MANAGED = on_memory_rows(
    "managed",
    f"({_LEGACY_CHAT} OR {_LEGACY_LANGGRAPH}) AND NOT m.metadata ? '{MANAGED_FIELD}'",
    _managed_assignment,
)
"""The adapters' records written before they were marked (schema version 11), marked: until
then deduplication, consolidation and the quota would treat them as ordinary memories."""


def _current_vector_copied(layout: TableLayout) -> str:
    return (
        f"EXISTS (SELECT 1 FROM {layout.qualified_history} h "
        f"WHERE {repeats_current_vector('h', 'm')})"
    )


def _forget_current_vector_copies(layout: TableLayout) -> str:
    return f"""
            UPDATE {layout.qualified_history} h SET embedding = NULL
            FROM batch b JOIN {layout.qualified_table} m
              ON m.tenant = $1 AND (m.scope, m.scope_id, m.key) = (b.scope, b.scope_id, b.key)
            WHERE h.tenant = $1 AND (h.scope, h.scope_id, h.key) = (b.scope, b.scope_id, b.key)
              AND {repeats_current_vector("h", "m")}
            RETURNING 1"""


HISTORY_VECTORS = Backfill(
    name="history_vectors",
    pending=_current_vector_copied,
    change=_forget_current_vector_copies,
    searched=False,
)
"""Space back from the history (schema version 27): before it, a memory's current version
was recorded with a copy of the memory's vector (1,536 bytes at 384 dimensions); since, it
is recorded without, and readers take the row's. Only a copy equal to the row's vector is
dropped; the history gets it back when the version is replaced, as for any current version.
(The space is reused by the history's next rows once VACUUM has seen them.)"""

BACKFILLS_TO_RUN = (TERMS, MANAGED, HISTORY_VECTORS)

REEMBED = "reembed"
"""The semantic reindex's entry: a walk whose batches are embedded in Python between reading
and writing (see PostgresStorage.reindex), kept in the same table with the same rules."""


def _register(layout: TableLayout, backfill: Backfill, tenant: str) -> Query:
    return Query(
        f"INSERT INTO {layout.qualified_backfills} (tenant, name) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING",
        [tenant, backfill.name],
    )


def _count_pending(layout: TableLayout, backfill: Backfill, tenant: str) -> Query:
    return Query(
        f"SELECT count(*) FROM {layout.qualified_table} m WHERE m.tenant = $1 AND "
        f"{backfill.pending(layout)}",
        [tenant],
    )


def saved_position(layout: TableLayout, name: str, tenant: str, *, lock: bool = False) -> Query:
    """Where the walk named ``name`` stands: one row (position, finished, started_at), or none
    if it never ran. ``lock``: hold its row for this transaction (one batch at a time)."""
    return Query(
        "SELECT position, finished_at IS NOT NULL AS finished, started_at "
        f"FROM {layout.qualified_backfills} "
        "WHERE tenant = $1 AND name = $2" + (" FOR UPDATE" if lock else ""),
        [tenant, name],
    )


def save_position(
    layout: TableLayout,
    name: str,
    tenant: str,
    position: list[str] | None,
    rows: int,
    *,
    start: bool = False,
    finished: bool = False,
) -> Query:
    """Record that a walk reached ``position`` having done ``rows`` more rows (``start``: a
    new walk begins; ``finished``: it is over). Run it in the transaction that wrote them."""
    # The moment comes with the inserted row: Citus calls no function in the SET clause
    # that is not immutable.
    return Query(
        f"INSERT INTO {layout.qualified_backfills} AS b (tenant, name, position, rows_done, "
        "updated_at, finished_at) VALUES ($1, $2, $3, $4, now(), CASE WHEN $6 THEN now() END) "
        "ON CONFLICT (tenant, name) DO UPDATE SET position = excluded.position, "
        "rows_done = CASE WHEN $5 THEN 0 ELSE b.rows_done END + excluded.rows_done, "
        "started_at = CASE WHEN $5 THEN excluded.updated_at ELSE b.started_at END, "
        "updated_at = excluded.updated_at, finished_at = excluded.finished_at",
        [tenant, name, position, rows, start, finished],
    )


async def is_finished(
    database: Database, layout: TableLayout, backfill: Backfill, tenant: str
) -> bool:
    """Whether every row of ``tenant`` has had ``backfill`` (registering it if new)."""
    await database.execute("backfill", _register(layout, backfill, tenant))
    state = await database.fetchrow("backfill", saved_position(layout, backfill.name, tenant))
    return state is not None and bool(state["finished"])


async def finish_if_idle(
    database: Database, layout: TableLayout, backfill: Backfill, tenant: str
) -> bool:
    """Whether ``backfill`` is finished for the tenant, recording it finished first when no
    row needs it (a new table, or one every row of which was written since): a store that
    only starts, as ``pepperpy-memory init`` does, leaves nothing pending."""
    if await is_finished(database, layout, backfill, tenant):
        return True
    pending = await database.fetchval("backfill", _any_pending(layout, backfill, tenant))
    if pending:
        return False
    done = save_position(layout, backfill.name, tenant, None, 0, finished=True)
    await database.execute("backfill", done)
    return True


def _any_pending(layout: TableLayout, backfill: Backfill, tenant: str) -> Query:
    return Query(
        f"SELECT EXISTS (SELECT 1 FROM {layout.qualified_table} m WHERE m.tenant = $1 AND "
        f"{backfill.pending(layout)})",
        [tenant],
    )


async def _batch(
    layout: TableLayout, backfill: Backfill, tenant: str, size: int, session: Session
) -> tuple[int, bool]:
    """Do the next batch; returns how many rows it changed and whether the backfill is done."""
    async with session.transaction():
        where = saved_position(layout, backfill.name, tenant, lock=True)
        state = await session.fetchrow(where)
        if state is None or state["finished"]:
            return 0, True
        after = state["position"] or ["", "", ""]  # scopes are never empty
        row = await session.fetchrow(
            Query(
                f"""
            WITH batch AS MATERIALIZED (
                SELECT m.scope, m.scope_id, m.key FROM {layout.qualified_table} m
                WHERE m.tenant = $1 AND (m.scope, m.scope_id, m.key) > ($2, $3, $4)
                ORDER BY m.scope, m.scope_id, m.key
                LIMIT $5
            ),
            changed AS ({backfill.change(layout)}
            )
            SELECT (SELECT count(*) FROM changed) AS changed,
                   (SELECT count(*) FROM batch) AS seen,
                   (SELECT ARRAY[scope, scope_id, key] FROM batch
                    ORDER BY scope DESC, scope_id DESC, key DESC LIMIT 1) AS last
            """,
                (tenant, *after, size),
            )
        )
        assert row is not None
        done = row["seen"] < size
        reached = save_position(
            layout, backfill.name, tenant, row["last"], row["changed"], finished=done
        )
        await session.execute(reached)
        return int(row["changed"]), done


async def run(
    database: Database,
    layout: TableLayout,
    backfill: Backfill,
    tenant: str,
    *,
    batch_size: int = 500,
    progress: ProgressCallback | None = None,
) -> int:
    """Run ``backfill`` over the tenant's rows to the end (resuming where any earlier run
    stopped); returns how many rows this call changed."""
    if await is_finished(database, layout, backfill, tenant):
        return 0
    total = int(await database.fetchval("backfill", _count_pending(layout, backfill, tenant)))
    logger.info(
        "backfilling %s on %s.%s: %d memories to do",
        backfill.name,
        layout.schema,
        layout.table,
        total,
    )
    changed = 0
    while True:
        count, done = await database.run(
            "backfill", partial(_batch, layout, backfill, tenant, batch_size)
        )
        changed += count
        if progress is not None and total:  # (a walk with nothing to do shows no bar)
            progress(min(changed, total), total)
        if done:
            return changed
