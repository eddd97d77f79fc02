"""The shapes every statement takes before it runs: :class:`Query`, and :class:`Batch` for
one statement run once per row."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

__all__ = ["Query", "Batch", "send", "send_batch"]


class Query(NamedTuple):
    """One statement and its bind parameters (``$1`` is ``args[0]``)."""

    sql: str
    args: Sequence[Any] = ()
    before: str = ""
    """Statements without parameters to run first on the same connection and transaction
    (on a Citus cluster: the SET LOCAL that tells the triggers on the workers about the
    change; see history.change_settings)."""

    def for_each(self, rows: Iterable[Sequence[Any]]) -> Batch:
        """This statement once per row of bind parameters (its own ``args`` are not used)."""
        return Batch(self.sql, list(rows), self.before)


class Batch(NamedTuple):
    """One statement run once per row of bind parameters, in one round trip (asyncpg's
    ``executemany``)."""

    sql: str
    rows: Sequence[Sequence[Any]]
    before: str = ""
    """As :attr:`Query.before`: run once, first."""


async def send(conn: Any, method: str, query: Query, timeout: float | None = None) -> Any:
    """Run ``query`` on ``conn`` by its ``method`` (``fetch``, ``fetchrow``, ``fetchval``,
    ``execute``), after what it needs run :attr:`~Query.before` it."""
    if query.before:
        await conn.execute(query.before)
    return await getattr(conn, method)(query.sql, *query.args, timeout=timeout)


async def send_batch(conn: Any, batch: Batch, timeout: float | None = None) -> None:
    """Run ``batch`` on ``conn``, after what it needs run :attr:`~Batch.before` it."""
    if batch.before:
        await conn.execute(batch.before)
    await conn.executemany(batch.sql, batch.rows, timeout=timeout)
