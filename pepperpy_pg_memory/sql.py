"""The one shape every statement takes before it runs: :class:`Query`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["Query", "send"]


class Query(NamedTuple):
    """One statement and its bind parameters (``$1`` is ``args[0]``)."""

    sql: str
    args: Sequence[Any] = ()
    before: str = ""
    """Statements without parameters to run first on the same connection and transaction
    (on a Citus cluster: the SET LOCAL that tells the triggers on the workers about the
    change; see history.change_settings)."""


async def send(conn: Any, method: str, query: Query, timeout: float | None = None) -> Any:
    """Run ``query`` on ``conn`` by its ``method`` (``fetch``, ``fetchrow``, ``fetchval``,
    ``execute``), after what it needs run :attr:`~Query.before` it."""
    if query.before:
        await conn.execute(query.before)
    return await getattr(conn, method)(query.sql, *query.args, timeout=timeout)
