"""Counting reads off the read path: how often ``retrieve`` and searches returned a memory, and
when last.

A read only notes the memories it returned, in memory. A background task writes the notes
every ``access_flush_interval`` seconds — one statement for all of them, so at most one write
per memory per interval — into the ``<table>_access`` side table (see
``schema.migrations._v9_importance_and_access``), never into the memory row: rewriting the
row would re-insert it into the HNSW and GIN indexes. Counts are bookkeeping: no version, no
``updated_at``. What is noted when the store closes is written then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from functools import partial

from .database import Database, in_one_transaction
from .errors import MemoryError
from .schema import IDENTITY_COLUMNS, TableLayout
from .shutdown import cancel_and_wait
from .sql import Query
from .types import Identity

__all__ = ["AccessTracker", "record_accesses"]

logger = logging.getLogger(__name__)


def record_accesses(
    layout: TableLayout,
    tenant: str,
    counts: dict[Identity, tuple[int, datetime]],
    *,
    restoring: bool = False,
) -> list[Query]:
    """:func:`_record_accesses`, in one statement, or on a cluster distributed by owner one
    per owner (Citus locks rows only in a statement that names the node's owner)."""
    if layout.distribution != "owner":
        return [_record_accesses(layout, tenant, counts, restoring=restoring)]
    by_owner: dict[str, dict[Identity, tuple[int, datetime]]] = {}
    for identity, count in counts.items():
        by_owner.setdefault(identity.scope_id, {})[identity] = count
    return [
        _record_accesses(layout, tenant, owned, restoring=restoring, scope_id=scope_id)
        for scope_id, owned in sorted(by_owner.items())
    ]


def _record_accesses(
    layout: TableLayout,
    tenant: str,
    counts: dict[Identity, tuple[int, datetime]],
    *,
    restoring: bool = False,
    scope_id: str | None = None,
) -> Query:
    """Add ``counts`` (per memory: reads, last read) to the access table; ``restoring`` (an
    import) keeps the larger of the two counts instead, so that importing twice counts once.

    Each memory is first held against deletion (``FOR KEY SHARE``, in identity order), the
    lock the foreign key would take anyway: a memory being deleted meanwhile is skipped, never
    waited for, and one deleted since its read is not counted (instead of failing the
    statement on the foreign key)."""
    owner = ", ".join(IDENTITY_COLUMNS)
    names = sorted(counts)  # one lock order for every flusher
    one_owner = "" if scope_id is None else "AND m.scope_id = $7"
    total = (
        "greatest(a.access_count, EXCLUDED.access_count)"
        if restoring
        else ("a.access_count + EXCLUDED.access_count")
    )
    return Query(
        f"""
        WITH counted AS (
            SELECT u.scope, u.scope_id, u.key, u.reads, u.last_read
            FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[])
                AS u(scope, scope_id, key, reads, last_read)
            JOIN {layout.qualified_table} m ON m.tenant = $1
                AND (m.scope, m.scope_id, m.key) = (u.scope, u.scope_id, u.key) {one_owner}
            ORDER BY u.scope, u.scope_id, u.key
            FOR KEY SHARE OF m SKIP LOCKED
        )
        INSERT INTO {layout.qualified_access} AS a ({owner}, access_count, last_accessed_at)
        SELECT $1, c.scope, c.scope_id, c.key, c.reads, c.last_read FROM counted c
        ON CONFLICT ({owner}) DO UPDATE SET
            access_count = {total},
            last_accessed_at = greatest(a.last_accessed_at, EXCLUDED.last_accessed_at)
        """,
        [
            tenant,
            [name.scope for name in names],
            [name.scope_id for name in names],
            [name.key for name in names],
            [counts[name][0] for name in names],
            [counts[name][1] for name in names],
            *([] if scope_id is None else [scope_id]),
        ],
    )


class AccessTracker:
    """Notes reads and writes them in the background (see the module's docstring)."""

    def __init__(
        self, database: Database, tenant: str, interval: float, *, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.database = database
        self.tenant = tenant
        self.interval = interval
        self.layout: TableLayout | None = None
        self._counts: dict[Identity, tuple[int, datetime]] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, identities: Iterable[Identity]) -> None:
        """Count one read of each of ``identities`` (no I/O)."""
        if not self.enabled:
            return
        now = datetime.now(timezone.utc)
        counts = self._counts
        for identity in identities:
            reads, _ = counts.get(identity, (0, now))
            counts[identity] = (reads + 1, now)
        if counts and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.interval)
        self._task = None  # reads noted from now on start the next wait
        try:
            await self.flush()
        except MemoryError as exc:
            # Counts are a hint for ranking: a failed write is logged, never raised to a reader.
            logger.warning("could not record memory reads: %s", exc)

    async def flush(self) -> None:
        """Write what has been noted, now."""
        counts, self._counts = self._counts, {}
        if not counts or self.layout is None:
            return
        queries = record_accesses(self.layout, self.tenant, counts)
        # Counts are up to an interval late anyway: reads on a replica need not wait for them.
        await self.database.run(
            "access", partial(in_one_transaction, queries, None), visible_to_reads=False
        )

    async def stop(self) -> None:
        """Write what is left and stop the background task."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self.database.is_open:
            try:
                await self.flush()
            except MemoryError as exc:
                logger.warning("could not record memory reads at close: %s", exc)
