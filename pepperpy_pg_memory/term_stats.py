"""Term statistics for contextual ranking: per tenant, how many memories hold each term, how
many memories there are and how many terms they hold on average.

BM25 weighs a term by its rarity, so a search needs document frequencies. Counting them on
every write would make the row of every common word a hot spot that all concurrent writers
queue on; instead they are recomputed, for one tenant at a time, from the memories' ``terms``
column in one statement, in the background, once the writes since the last refresh reach a
quarter of the memories counted then (and at start when none were ever counted). Between
refreshes the figures are a little stale: a new term reads as unseen (rare), which is what a
new identifier is. Statistics are kept per tenant so that scores reveal nothing about another
tenant's memories.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

import asyncpg

from .database import Database
from .queries import _LIVE
from .schema import TableLayout
from .shutdown import cancel_and_wait

__all__ = ["TermStatistics", "REFRESH_FRACTION"]

logger = logging.getLogger(__name__)

REFRESH_FRACTION = 0.25
"""Refresh once the writes since the last refresh reach this share of the memories then."""


async def refresh(layout: TableLayout, tenant: str, conn: asyncpg.Connection) -> int | None:
    """Recount the tenant's statistics; returns the memories counted, or None if another
    session is recounting them right now (its figures will do)."""
    table, stats, totals = (
        layout.qualified_table,
        layout.qualified_term_stats,
        layout.qualified_term_totals,
    )
    async with conn.transaction():
        locked = await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtext($1), hashtext($2))",
            f"{layout.schema}.{layout.table}.term_stats",
            tenant,
        )
        if not locked:
            return None
        # The memory table first, as migrations lock it: taking the statistics tables first
        # could deadlock with a start() changing the table.
        await conn.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
        await conn.execute(f"DELETE FROM {stats} WHERE tenant = $1", tenant)
        await conn.execute(
            f"""
            INSERT INTO {stats} (tenant, term, df)
            SELECT $1, lexeme, count(*) FROM {table} m, unnest(tsvector_to_array(m.terms)) lexeme
            WHERE m.tenant = $1 AND m.terms IS NOT NULL AND {_LIVE}
            GROUP BY lexeme
            """,
            tenant,
        )
        documents = await conn.fetchval(
            f"""
            INSERT INTO {totals} (tenant, documents, avg_length, refreshed_at)
            SELECT $1, count(*), coalesce(avg(length(m.terms)), 0), now() FROM {table} m
            WHERE m.tenant = $1 AND m.terms IS NOT NULL AND {_LIVE}
            ON CONFLICT (tenant) DO UPDATE SET documents = excluded.documents,
                avg_length = excluded.avg_length, refreshed_at = excluded.refreshed_at
            RETURNING documents
            """,
            tenant,
        )
        return int(documents)


async def counted(layout: TableLayout, tenant: str, conn: asyncpg.Connection) -> int | None:
    """How many memories the last refresh counted (None: never refreshed)."""
    value = await conn.fetchval(
        f"SELECT documents FROM {layout.qualified_term_totals} WHERE tenant = $1", tenant
    )
    return None if value is None else int(value)


class TermStatistics:
    """Keeps one tenant's term statistics fresh enough, refreshing them in the background."""

    def __init__(self, database: Database, layout: Callable[[], TableLayout], tenant: str) -> None:
        self._database = database
        self._layout = layout
        self._tenant = tenant
        self._documents = 0
        self._writes = 0
        self._task: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        """Read how many memories the statistics cover; refresh if they were never counted."""
        documents = await self._database.run(
            "term_stats", partial(counted, self._layout(), self._tenant)
        )
        self._documents = documents or 0
        if documents is None:
            self._schedule()

    def note_writes(self, count: int) -> None:
        """``count`` memories were written or deleted: refresh once there are enough."""
        if count <= 0:
            return
        self._writes += count
        if self._writes >= max(1, REFRESH_FRACTION * self._documents):
            self._schedule()

    def _schedule(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True  # writes arrived while counting: count again after
            return
        self._writes = 0
        self._task = asyncio.get_running_loop().create_task(self._refresh_in_background())

    async def _refresh_in_background(self) -> None:
        while True:
            self._again = False
            try:
                await self.refresh_now()
            except Exception:  # a missed refresh only leaves figures stale: log, go on
                logger.warning("refreshing term statistics failed", exc_info=True)
                return
            if not self._again:
                return
            self._writes = 0

    async def refresh_now(self) -> None:
        """Recount the statistics now (a no-op if another session is recounting them)."""
        # Figures for ranking, recounted now and then: reads on a replica need not wait for
        # the recount to be replayed.
        documents = await self._database.run(
            "term_stats", partial(refresh, self._layout(), self._tenant), visible_to_reads=False
        )
        if documents is not None:
            self._documents = documents

    async def settle(self) -> None:
        """Wait for a background refresh under way."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.shield(task)

    async def stop(self) -> None:
        """Cancel a background refresh (its transaction rolls back; figures stay as they were)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
