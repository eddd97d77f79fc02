"""The steps of ``reindex()`` and ``stats()`` that need one connection of their own.

Each function runs on a connection handed to it by :meth:`.database.Database.run` (which owns
retries, timeouts and error translation) and does one thing in one transaction; the
statements come from :class:`~.queries.Statements` and :class:`~.schema.TableLayout`. The
reindex position is kept in the registry as the whole identity it reached.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

from .database import in_one_transaction
from .errors import MemoryConfigurationError
from .queries import Restriction, Statements
from .schema import TableLayout, text_search_config_exists
from .sql import Query, Session
from .types import Identity

__all__ = [
    "decode_cursor",
    "convert_dimension",
    "rebuild_contextual",
    "table_figures",
    "write_reindexed",
]

logger = logging.getLogger(__name__)

START = Identity("", "", "")
"""Precedes every identity (scopes are never empty): where a reindex starts."""


def decode_cursor(saved: str | None, tenant: str) -> Identity | None:
    """The position a reindex of ``tenant`` left in the registry's ``reindex_cursor`` (where
    releases before the backfill table kept it), or None to start from the beginning (none
    saved, another tenant's, or a key alone as releases before owner identity saved it)."""
    if not saved:
        return None
    try:
        parts = json.loads(saved)
    except json.JSONDecodeError:
        parts = None
    if not (isinstance(parts, list) and len(parts) == 4 and all(isinstance(p, str) for p in parts)):
        logger.info("reindex position %r is from an older release: starting over", saved)
        return None
    if parts[0] != tenant:
        return None
    return Identity(*parts[1:])


async def write_reindexed(
    statements: Statements,
    records: list[tuple[Any, ...]],
    position: Query,
    session: Session,
) -> None:
    """Store re-embedded vectors and the position they reach (see backfill.save_position)."""
    # The vectors and the position move together: a crash never skips a batch.
    async with session.transaction():
        await session.execute_batch(statements.set_embeddings().for_each(records))
        await session.execute(position)


async def convert_dimension(
    old: TableLayout, new: TableLayout, timeout: float, session: Session
) -> None:
    """Retype the embedding column from ``old``'s vectors to ``new``'s, dropping them all."""
    # Built while the column is empty, the index then grows with each batch.
    await in_one_transaction(
        [
            old.drop_vector_index(),
            old.drop_passages_index(),
            *new.retype_embedding_column(),
            Query(new.hnsw_index_statement()),
            Query(new.passages_hnsw_statement()),
            Statements(new).record_dimension(),
        ],
        timeout,
        session,
    )


async def rebuild_contextual(
    layout: TableLayout, wanted: str, tenant: str, timeout: float, session: Session
) -> int:
    """Rebuild the terms and trigram indexes, first switching the text search
    configuration to ``wanted`` if it differs; returns how many memories they cover."""
    async with session.transaction():
        steps: list[Query] = []
        if layout.text_search_config != wanted:
            if not await text_search_config_exists(session, wanted):
                raise MemoryConfigurationError(
                    f"text search configuration {wanted!r} does not exist",
                    field="text_search_config",
                )
            switched = replace(layout, text_search_config=wanted)
            steps += [
                *switched.recompute_terms(),
                Statements(switched).record_text_search_config(),
            ]
        steps += layout.reindex_text_indexes()
        await in_one_transaction(steps, timeout, session)
        count = Statements(layout).count_contextual(tenant)
        return int(await session.fetchval(count))


OWNERS_IN_STATS = 200
"""``stats()["by_owner"]`` lists this many owners at most, the largest first."""


def owner_label(scope: str, scope_id: str) -> str:
    """An owner as people write it: ``user:ana``, ``session:s-1``, ``global``."""
    return scope if not scope_id else f"{scope}:{scope_id}"


async def table_figures(statements: Statements, tenant: str, session: Session) -> dict[str, Any]:
    """The tenant's row counts (in all, per type, for the largest owners), and on-disk sizes
    of the memory table and its indexes."""
    figures: dict[str, Any] = {}
    for name, query in (
        ("memories", statements.count(Restriction(tenant=tenant))),
        ("expired_not_cleaned", statements.count_expired(tenant)),
        ("passages", statements.count_passages(tenant)),
    ):
        figures[name] = int(await session.fetchval(query))
    by_type = statements.counts_by_type(tenant)
    figures["by_type"] = {row["name"]: int(row["memories"]) for row in await session.fetch(by_type)}
    by_owner = statements.counts_by_owner(tenant, OWNERS_IN_STATS)
    figures["by_owner"] = {
        owner_label(row["scope"], row["scope_id"]): int(row["memories"])
        for row in await session.fetch(by_owner)
    }
    sizes_query, indexes_query = statements.table_sizes(), statements.index_sizes()
    sizes = await session.fetchrow(sizes_query)
    assert sizes is not None
    indexes = await session.fetch(indexes_query)
    figures["table_bytes"] = int(sizes["heap"])
    figures["total_bytes"] = int(sizes["total"])
    figures["index_bytes"] = {row["name"]: int(row["bytes"]) for row in indexes}
    return figures
