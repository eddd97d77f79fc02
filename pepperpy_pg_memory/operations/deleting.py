"""Deletes: one memory, the memories matching criteria, a tenant's all. Each deleted memory
leaves a ``delete`` version in the history, from which it can be restored."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..history import Change
from ..metrics import instrumented
from ..queries import Restriction
from .naming import check_unambiguous, owners_of, resolve
from .started import Started

__all__ = ["delete", "delete_many", "clear"]


@instrumented("delete")
async def delete(
    started: Started[Any], key: str, restriction: Restriction | None, change: Change
) -> bool:
    """Delete the memory ``key`` names within ``restriction`` (None: the key's one live
    holder); True if a live one was deleted."""
    if restriction is None:
        holders = await resolve(started, [key], None, None)
        if not holders:
            return False
        restriction = started.restriction(
            holders[0].scope, holders[0].scope_id, include_expired=True, include_invalid=True
        )
    rows = await started.database.fetch(
        "delete", started.statements.delete(key, restriction, change)
    )
    owner = restriction.owner
    started.term_stats.note_writes(len(rows), [owner] * len(rows) if owner else ())
    return any(row["live"] for row in rows)


@instrumented("delete_many")
async def delete_many(
    started: Started[Any],
    criteria: Restriction,
    keys: frozenset[str] | None,
    *,
    owner_given: bool,
    change: Change,
) -> int:
    """Delete every memory ``criteria`` (and ``keys``) select; how many. ``keys`` without
    ``owner_given`` name each key's one live holder among the selected."""
    identities = None
    if keys is not None and not owner_given:
        # Each key must name one live memory among those the other criteria select.
        found = await owners_of(started, sorted(keys), criteria)
        check_unambiguous(found)
        if not found:
            return 0
        identities = frozenset(found)
    restriction = replace(
        criteria, keys=keys, identities=identities, include_expired=True, include_invalid=True
    )
    # Its work grows with the rows matched, which nothing bounds.
    deleted = await started.database.execute(
        "delete_many",
        started.statements.delete_many(restriction, change),
        timeout=started.config.maintenance_timeout,
    )
    # Several owners' counts, when one is not named, go stale until their next writes.
    owner = restriction.owner
    started.term_stats.note_writes(deleted, [owner] * deleted if owner else ())
    return deleted


@instrumented("clear")
async def clear(started: Started[Any]) -> int:
    """Delete every memory of the store's tenant; how many."""
    deleted = await started.database.execute(
        "clear",
        started.statements.delete_many(
            Restriction(tenant=started.tenant, include_expired=True, include_invalid=True),
            Change(reason="clear"),
        ),
        timeout=started.config.maintenance_timeout,
    )
    started.vectors.cache.clear()
    started.term_stats.note_writes(deleted)
    return deleted
