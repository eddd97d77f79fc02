"""Term statistics for contextual ranking: how many memories hold each term, how many
memories there are and how many terms they hold on average — per tenant, and per owner.

BM25 weighs a term by its rarity, so a search needs document frequencies. Counting them on
every write would make the row of every common word a hot spot that all concurrent writers
queue on; instead they are recomputed from the memories' ``terms`` column, in the background,
once the writes since the last count reach a quarter of the memories counted then, at most
once a second (and at start, or at an owner's first search here, when none were ever
counted). Between refreshes the figures are a little stale: a new term reads as unseen
(rare), which is what a new identifier is.

Whose memories are counted is a matter of isolation. A search within one owner weighs terms
by that owner's memories (``PostgresConfig.term_statistics="owner"``, the default): counted
over the tenant, one user's scores would move with the words other users store, and a user
bound to one owner could probe them. A search across owners sees the tenant's memories
anyway and uses the tenant's figures. The per-owner figures cost a second recount of the
owners written to, in the background; ``"tenant"`` leaves it out.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial

from .database import Database
from .schema import TableLayout, live
from .shutdown import cancel_and_wait
from .sql import Query, Session

__all__ = ["TermStatistics", "REFRESH_FRACTION", "Owner"]

logger = logging.getLogger(__name__)

REFRESH_FRACTION = 0.25
"""Refresh once the writes since the last refresh reach this share of the memories then."""

REFRESH_SPACING = 1.0
"""Seconds from the end of one refresh due to writes to the start of the next. On a small
table every batch of writes is a quarter of it: without a spacing, a burst of writes would
run two recounts per batch beside its writes (a LangGraph host's put/get/delete mix spent a
third of its database time on them)."""

OWNERS_PER_TRANSACTION = 500
"""Owners recounted in one transaction: each holds an advisory lock until it commits, and
PostgreSQL's lock table is shared and bounded."""

REMEMBERED_OWNERS = 100_000
"""Owners whose statistics one process remembers having checked, before it forgets them all
(a long-lived server with many users would otherwise grow without bound)."""

Owner = tuple[str, str]
"""(scope, scope_id) as stored."""


def _lock_class(layout: TableLayout) -> str:
    return f"{layout.schema}.{layout.table}.term_stats"


async def refresh(layout: TableLayout, tenant: str, session: Session) -> int | None:
    """Recount the tenant's statistics; returns the memories counted, or None if another
    session is recounting them right now (its figures will do)."""
    table, stats, totals = (
        layout.qualified_table,
        layout.qualified_term_stats,
        layout.qualified_term_totals,
    )
    async with session.transaction():
        locked = await session.fetchval(
            Query(
                "SELECT pg_try_advisory_xact_lock(hashtext($1), hashtext($2))",
                (_lock_class(layout), tenant),
            )
        )
        if not locked:
            return None
        # The memory table first, as migrations lock it: taking the statistics tables first
        # could deadlock with a start() changing the table.
        await session.execute(Query(f"LOCK TABLE {table} IN ACCESS SHARE MODE"))
        await session.execute(Query(f"DELETE FROM {stats} WHERE tenant = $1", (tenant,)))
        # (No row is left to conflict with. Said all the same: on a Citus cluster an insert
        # into a reference table without it goes by COPY, which row-level security refuses.)
        await session.execute(
            Query(
                f"""
            INSERT INTO {stats} (tenant, term, df)
            SELECT $1, lexeme, count(*) FROM {table} m, unnest(tsvector_to_array(m.terms)) lexeme
            WHERE m.tenant = $1 AND m.terms IS NOT NULL AND {live(layout.refresh_check)}
            GROUP BY lexeme
            ON CONFLICT DO NOTHING
            """,
                (tenant,),
            )
        )
        documents = await session.fetchval(
            Query(
                f"""
            INSERT INTO {totals} (tenant, documents, avg_length, refreshed_at)
            SELECT $1, count(*), coalesce(avg(length(m.terms)), 0), now() FROM {table} m
            WHERE m.tenant = $1 AND m.terms IS NOT NULL AND {live(layout.refresh_check)}
            ON CONFLICT (tenant) DO UPDATE SET documents = excluded.documents,
                avg_length = excluded.avg_length, refreshed_at = excluded.refreshed_at
            RETURNING documents
            """,
                (tenant,),
            )
        )
        return int(documents)


async def owners_of(layout: TableLayout, tenant: str, session: Session) -> list[Owner]:
    """Every owner holding memories of the tenant."""
    rows = await session.fetch(
        Query(
            f"SELECT DISTINCT scope, scope_id FROM {layout.qualified_table} WHERE tenant = $1",
            (tenant,),
        )
    )
    return [(row["scope"], row["scope_id"]) for row in rows]


async def refresh_owners(
    layout: TableLayout,
    tenant: str,
    owners: list[Owner],
    session: Session,
    *,
    only_uncounted: bool = False,
) -> dict[Owner, int]:
    """Recount the statistics of ``owners`` (at most :data:`OWNERS_PER_TRANSACTION`);
    returns the memories counted per owner. An owner another session is recounting right now
    is left to it; with ``only_uncounted``, an owner counted before is not recounted (its
    last count is returned)."""
    table, terms, totals = (
        layout.qualified_table,
        layout.qualified_owner_terms,
        layout.qualified_owner_totals,
    )
    owned = "unnest($2::text[], $3::text[]) o(scope, scope_id)"
    figures: dict[Owner, int] = {}
    if only_uncounted:
        rows = await session.fetch(
            Query(
                f"""SELECT t.scope, t.scope_id, t.documents FROM {owned} JOIN {totals} t
                ON t.tenant = $1 AND t.scope = o.scope AND t.scope_id = o.scope_id""",
                (tenant, [owner[0] for owner in owners], [owner[1] for owner in owners]),
            )
        )
        figures = {(row["scope"], row["scope_id"]): int(row["documents"]) for row in rows}
        owners = [owner for owner in owners if owner not in figures]
        if not owners:
            return figures
    async with session.transaction():
        await session.execute(Query(f"LOCK TABLE {table} IN ACCESS SHARE MODE"))  # see refresh()
        # Two sessions recounting one owner would both insert its rows: one waits for the
        # other, then fails on the primary key. Each owner is recounted under its lock.
        locked = await session.fetch(
            Query(
                f"""
            SELECT o.scope, o.scope_id FROM {owned}
            WHERE pg_try_advisory_xact_lock(
                hashtext($4), hashtext($1 || '/' || o.scope || '/' || o.scope_id))
            """,
                (
                    tenant,
                    [owner[0] for owner in owners],
                    [owner[1] for owner in owners],
                    _lock_class(layout),
                ),
            )
        )
        if not locked:
            return figures
        mine = [[row["scope"] for row in locked], [row["scope_id"] for row in locked]]
        # The inserts below say ON CONFLICT DO NOTHING though these owners' rows are gone:
        # on a Citus cluster an insert of this shape without it goes by COPY, which
        # row-level security refuses (see refresh()).
        same_owner = "x.tenant = $1 AND x.scope = o.scope AND x.scope_id = o.scope_id"
        for side in (terms, totals):
            await session.execute(
                Query(
                    f"DELETE FROM {side} x USING {owned} WHERE {same_owner}",
                    (tenant, *mine),
                )
            )
        await session.execute(
            Query(
                f"""
            INSERT INTO {terms} (tenant, scope, scope_id, term, df)
            SELECT $1, m.scope, m.scope_id, lexeme, count(*)
            FROM {owned} JOIN {table} m
                ON m.tenant = $1 AND m.scope = o.scope AND m.scope_id = o.scope_id,
                unnest(tsvector_to_array(m.terms)) lexeme
            WHERE m.terms IS NOT NULL AND {live(layout.refresh_check)}
            GROUP BY m.scope, m.scope_id, lexeme
            ON CONFLICT DO NOTHING
            """,
                (tenant, *mine),
            )
        )
        # An owner without memories keeps no totals: it reads as never counted, and any
        # search of it finds nothing to rank.
        counted = await session.fetch(
            Query(
                f"""
            INSERT INTO {totals} AS t (tenant, scope, scope_id, documents, avg_length,
                                       refreshed_at)
            SELECT $1, m.scope, m.scope_id, count(*), avg(length(m.terms)), now()
            FROM {owned} JOIN {table} m
                ON m.tenant = $1 AND m.scope = o.scope AND m.scope_id = o.scope_id
            WHERE m.terms IS NOT NULL AND {live(layout.refresh_check)}
            GROUP BY m.scope, m.scope_id
            ON CONFLICT DO NOTHING
            RETURNING t.scope, t.scope_id, t.documents
            """,
                (tenant, *mine),
            )
        )
        figures.update({(row["scope"], row["scope_id"]): 0 for row in locked})
        figures.update({(row["scope"], row["scope_id"]): int(row["documents"]) for row in counted})
        return figures


async def counted(layout: TableLayout, tenant: str, session: Session) -> int | None:
    """How many memories the last refresh counted (None: never refreshed)."""
    value = await session.fetchval(
        Query(f"SELECT documents FROM {layout.qualified_term_totals} WHERE tenant = $1", (tenant,))
    )
    return None if value is None else int(value)


class TermStatistics:
    """Keeps one tenant's term statistics, and those of the owners it writes and searches,
    fresh enough, refreshing them in the background."""

    def __init__(
        self,
        database: Database,
        layout: Callable[[], TableLayout],
        tenant: str,
        *,
        per_owner: bool = True,
    ) -> None:
        self._database = database
        self._layout = layout
        self._tenant = tenant
        self._per_owner = per_owner
        self._documents = 0
        self._writes = 0
        self._tenant_due = False
        self._owner_documents: dict[Owner, int] = {}
        self._owner_writes: Counter[Owner] = Counter()
        self._owners_due: set[Owner] = set()
        # Owners searched here whose statistics may never have been counted (another process
        # wrote them): counted once, in the background, if they were not.
        self._owners_unchecked: set[Owner] = set()
        self._task: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")  # the loop's time when a refresh last ended

    async def start(self) -> None:
        """Read how many memories the statistics cover; refresh if they were never counted."""
        documents = await self._database.run(
            "term_stats", partial(counted, self._layout(), self._tenant)
        )
        self._documents = documents or 0
        if documents is None:
            self._tenant_due = True
            self._schedule()

    def note_writes(self, count: int, owners: Iterable[Owner] = ()) -> None:
        """``count`` memories were written or deleted, of ``owners`` (each memory's owner, as
        far as known): refresh once there are enough."""
        if count <= 0:
            return
        self._writes += count
        if self._writes >= max(1, REFRESH_FRACTION * self._documents):
            self._writes = 0
            self._tenant_due = True
        if self._per_owner:
            for owner, written in Counter(owners).items():
                self._owner_writes[owner] += written
                if self._owner_writes[owner] >= max(
                    1, REFRESH_FRACTION * self._owner_documents.get(owner, 0)
                ):
                    del self._owner_writes[owner]
                    self._owners_due.add(owner)
        if self._tenant_due or self._owners_due:
            self._schedule()

    def note_search(self, owner: Owner | None) -> None:
        """A search within ``owner`` (None: across owners) is about to run."""
        if not self._per_owner or owner is None or owner in self._owner_documents:
            return
        if len(self._owner_documents) >= REMEMBERED_OWNERS:
            self._owner_documents.clear()
        # Remembered as seen at once, so that a burst of searches schedules one check.
        self._owner_documents[owner] = 0
        self._owners_unchecked.add(owner)
        self._schedule()

    def _schedule(self) -> None:
        if self._task is not None and not self._task.done():
            return  # the running refresh looks for more work before it ends
        self._task = asyncio.get_running_loop().create_task(self._refresh_in_background())

    async def _refresh_in_background(self) -> None:
        try:
            while self._tenant_due or self._owners_due or self._owners_unchecked:
                if self._tenant_due or self._owners_due:
                    # The writes that come meanwhile join this refresh.
                    loop = asyncio.get_running_loop()
                    await asyncio.sleep(self._refreshed_at + REFRESH_SPACING - loop.time())
                if self._tenant_due:
                    self._tenant_due = False
                    await self._refresh_tenant()
                due, self._owners_due = self._owners_due, set()
                await self._refresh_owners(list(due))
                unchecked, self._owners_unchecked = self._owners_unchecked - due, set()
                await self._refresh_owners(list(unchecked), only_uncounted=True)
                self._refreshed_at = asyncio.get_running_loop().time()
        except Exception:  # a missed refresh only leaves figures stale: log, go on
            logger.warning("refreshing term statistics failed", exc_info=True)

    async def _refresh_tenant(self) -> None:
        # Figures for ranking, recounted now and then: reads on a replica need not wait for
        # the recount to be replayed.
        documents = await self._database.run(
            "term_stats", partial(refresh, self._layout(), self._tenant), visible_to_reads=False
        )
        if documents is not None:
            self._documents = documents

    async def _refresh_owners(self, owners: list[Owner], *, only_uncounted: bool = False) -> None:
        for start in range(0, len(owners), OWNERS_PER_TRANSACTION):
            figures = await self._database.run(
                "term_stats",
                partial(
                    refresh_owners,
                    self._layout(),
                    self._tenant,
                    owners[start : start + OWNERS_PER_TRANSACTION],
                    only_uncounted=only_uncounted,
                ),
                visible_to_reads=False,
            )
            self._owner_documents.update(figures)

    async def refresh_now(self) -> None:
        """Recount the tenant's statistics and, per owner, every owner's, now (leaving any
        that another session is recounting right now to it)."""
        await self._refresh_tenant()
        if self._per_owner:
            owners = await self._database.run(
                "term_stats",
                partial(owners_of, self._layout(), self._tenant),
                visible_to_reads=False,
            )
            await self._refresh_owners(owners)

    async def settle(self) -> None:
        """Wait for a background refresh under way."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.shield(task)

    async def stop(self) -> None:
        """Cancel a background refresh (its transaction rolls back; figures stay as they were)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
