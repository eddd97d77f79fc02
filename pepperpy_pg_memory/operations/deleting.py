"""Deletes: one memory, the memories matching criteria, a tenant's all. Each deleted memory
leaves a ``delete`` version in the history, from which it can be restored."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..database import affected
from ..errors import MemoryValidationError
from ..history import Change
from ..items import Scope
from ..metrics import instrumented
from ..queries import Restriction
from ..sql import Session
from .naming import check_unambiguous, owners_of, resolve
from .started import Started

__all__ = ["delete", "delete_many", "clear"]


@instrumented("delete")
async def delete(
    started: Started[Any], key: str, scope: Scope, scope_id: str | None, change: Change
) -> bool:
    """Delete the memory ``key`` names for the owner ``scope``/``scope_id`` (no scope: the
    key's one live holder); True if a live one was deleted."""
    if scope is None:
        if scope_id is not None:
            raise MemoryValidationError("scope_id needs a scope")
        holders = await resolve(started, [key], None, None)
        if not holders:
            return False
        scope, scope_id = holders[0].scope, holders[0].scope_id
    restriction = started.restriction(scope, scope_id, include_expired=True, include_invalid=True)
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
    deleted = await _delete_matching(started, "delete_many", restriction, change)
    # Several owners' counts, when one is not named, go stale until their next writes.
    owner = restriction.owner
    started.term_stats.note_writes(deleted, [owner] * deleted if owner else ())
    return deleted


@instrumented("clear")
async def clear(started: Started[Any]) -> int:
    """Delete every memory of the store's tenant; how many."""
    everything = Restriction(tenant=started.tenant, include_expired=True, include_invalid=True)
    deleted = await _delete_matching(started, "clear", everything, Change(reason="clear"))
    if started.statements.refreshes is not None:
        await started.database.execute("clear", started.statements.clear_refreshes(started.tenant))
    started.vectors.cache.clear()
    started.term_stats.note_writes(deleted)
    return deleted


OWNERS_PER_PASS = 500
"""Owners a delete across owners on a cluster looks up at a time."""


async def _delete_matching(
    started: Started[Any], operation: str, restriction: Restriction, change: Change
) -> int:
    """Delete what ``restriction`` selects, in one transaction; how many. On a cluster
    distributed by owner and without one owner, owner by owner (Citus locks rows only in a
    statement naming the owner's node): one statement each, still in one transaction."""
    statements = started.statements
    # Its work grows with the rows matched, which nothing bounds.
    timeout = started.config.maintenance_timeout
    if started.layout.distribution != "owner" or restriction.owner is not None:
        return await started.database.execute(
            operation, statements.delete_many(restriction, change), timeout=timeout
        )

    async def work(session: Session) -> int:
        deleted = 0
        async with session.transaction():
            while True:
                matching = statements.matching_owners(restriction, OWNERS_PER_PASS)
                owners = await session.fetch(matching, timeout=timeout)
                for owner in owners:
                    one = restriction.of_owner(owner["scope"], owner["scope_id"])
                    status = await session.execute(
                        statements.delete_many(one, change), timeout=timeout
                    )
                    deleted += affected(status)
                if len(owners) < OWNERS_PER_PASS:
                    return deleted

    return await started.database.run(operation, work)
