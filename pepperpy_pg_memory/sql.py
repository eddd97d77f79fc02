"""The shapes every statement takes before it runs — :class:`Query`, and :class:`Batch` for
one statement run once per row — and :class:`Session`, the one way to run them on a
connection of one's own."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

__all__ = ["Query", "Batch", "Session"]


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


async def _send(conn: Any, method: str, query: Query, timeout: float | None = None) -> Any:
    """Run ``query`` on ``conn`` by its ``method`` (``fetch``, ``fetchrow``, ``fetchval``,
    ``execute``), after what it needs run :attr:`~Query.before` it."""
    if query.before:
        await conn.execute(query.before)
    return await getattr(conn, method)(query.sql, *query.args, timeout=timeout)


async def _send_batch(conn: Any, batch: Batch, timeout: float | None = None) -> None:
    """Run ``batch`` on ``conn``, after what it needs run :attr:`~Batch.before` it."""
    if batch.before:
        await conn.execute(batch.before)
    await conn.executemany(batch.sql, batch.rows, timeout=timeout)


class Session:
    """One connection's statements, run in order, each a :class:`Query` (a :class:`Batch`,
    or rows copied into a table).

    The database layer hands one to work that needs a connection of its own — a transaction,
    a COPY, a session's locks — and closes or releases the connection after; no other module
    holds a connection, so every statement goes through the same shapes.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def execute(self, query: Query, *, timeout: float | None = None) -> str:
        """Run ``query``; its status ("DELETE 3")."""
        status: str = await _send(self._connection, "execute", query, timeout)
        return status

    async def fetch(self, query: Query, *, timeout: float | None = None) -> list[Any]:
        rows: list[Any] = await _send(self._connection, "fetch", query, timeout)
        return rows

    async def fetchrow(self, query: Query, *, timeout: float | None = None) -> Any:
        return await _send(self._connection, "fetchrow", query, timeout)

    async def fetchval(self, query: Query, *, timeout: float | None = None) -> Any:
        return await _send(self._connection, "fetchval", query, timeout)

    async def execute_batch(self, batch: Batch, *, timeout: float | None = None) -> None:
        await _send_batch(self._connection, batch, timeout)

    async def copy_rows(
        self,
        table: str,
        records: Iterable[Sequence[Any]],
        *,
        columns: Sequence[str],
        schema_name: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """COPY ``records`` into ``table`` (an identifier the caller has validated)."""
        await self._connection.copy_records_to_table(
            table, records=records, columns=columns, schema_name=schema_name, timeout=timeout
        )

    def transaction(self, **options: Any) -> Any:
        """asyncpg's transaction (or savepoint) context manager for this connection."""
        return self._connection.transaction(**options)

    async def close(self) -> None:
        await self._connection.close()
