"""Memory over time: the versions of a memory, bringing one back, replacing a fact by a new
one, closing a fact's validity."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import partial
from typing import Any, TypeVar

from ..bulk import write_superseding
from ..errors import AmbiguousKeyError, MemoryNotFoundError, MemoryValidationError
from ..history import Change
from ..items import STORE_DEFAULTS, TTL, Scope, aware_moment, owner
from ..metrics import instrumented
from ..models import MemoryEntry, MemoryVersion
from ..types import MANAGED_FIELD, Identity
from .reads import retrieve
from .rows import identity_of, identity_of_entry
from .started import Started
from .writing import passage_rows, plan_embeddings, write_one, written

__all__ = ["named", "history", "restore", "supersede", "invalidate", "SUPERSEDE_FIELDS"]

V = TypeVar("V")

SUPERSEDE_FIELDS = frozenset(
    {
        "type",
        "indices",
        "metadata",
        "ttl",
        "expires_at",
        "embedding",
        "text",
        "passages",
        "importance",
    }
)
"""What ``supersede()`` passes on to the new fact's write (``store()``'s arguments)."""


async def named(started: Started[Any], key: str, scope: Scope, scope_id: str | None) -> Identity:
    """The memory ``key`` names, live or deleted: the given owner's, or, without a scope, the
    one owner holding the key now or in its history."""
    owner_scope, owner_id = owner(scope, scope_id, started.config.default_scope_id)
    if owner_scope is not None:
        assert owner_id is not None
        return Identity(owner_scope.value, owner_id, key)
    rows = await started.database.reading.fetch(
        "history", started.history.owners_of(started.tenant, key)
    )
    if not rows:
        raise MemoryNotFoundError(key)
    if len(rows) > 1:
        raise AmbiguousKeyError(key, len(rows))
    return identity_of(rows[0])


@instrumented("history")
async def history(
    started: Started[V], identity: Identity, limit: int | None, include_embedding: bool
) -> builtins.list[MemoryVersion[V]]:
    """The memory's versions, newest first."""
    rows = await started.database.reading.fetch(
        "history", started.history.versions(started.tenant, identity, limit)
    )
    return [started.rows.version(row, include_embedding) for row in rows]


async def gone(
    started: Started[V], owner: tuple[str, str] | None, limit: int
) -> builtins.list[MemoryVersion[V]]:
    """The memories taken away and not stored again, each by its last version."""
    rows = await started.database.reading.fetch(
        "history", started.history.gone(started.tenant, owner, limit)
    )
    return [started.rows.version(row, False) for row in rows]


@instrumented("restore")
async def restore(
    started: Started[V], identity: Identity, version: int, change: Change
) -> MemoryEntry[V]:
    """``version`` of the memory made current again, as a new version."""
    row = await started.database.fetchrow(
        "restore", started.history.version(started.tenant, identity, version)
    )
    if row is None:
        missing = MemoryNotFoundError(identity.key)
        missing.message = f"memory {identity.key!r} has no version {version}"
        raise missing
    expires_at = row["expires_at"]
    ttl: TTL = "never" if expires_at is None else None
    if expires_at is not None and expires_at <= datetime.now(timezone.utc):
        expires_at = None  # long gone: the type's time-to-live, from now
    value = row["value"]
    write = started.prepare(
        identity.key,
        value,
        type=row["memory_type"],
        scope=identity.scope,
        scope_id=identity.scope_id or None,
        indices=row["indices"],
        metadata=row["metadata"],
        managed_by=row["metadata"].get(MANAGED_FIELD),
        ttl=ttl if expires_at is None else None,
        expires_at=expires_at,
        text=row["content"],
        importance=row["importance"],
    )
    write.valid_from, write.valid_to = row["valid_from"], row["valid_to"]
    write.supersedes, write.change = row["supersedes"], change
    return await write_one(started, write, started.rows.value(value))


@instrumented("supersede")
async def supersede(
    started: Started[V],
    key: str,
    value: Any,
    new_key: Any,
    scope: Scope,
    scope_id: str | None,
    actor: str | None,
    reason: str | None,
    store_fields: Mapping[str, Any],
) -> MemoryEntry[V]:
    """``value`` made the live, valid fact in place of the one under ``key`` (as a new
    version of it, or under ``new_key``, the old one closed), in one transaction."""
    unknown = set(store_fields) - SUPERSEDE_FIELDS
    if unknown:
        raise MemoryValidationError(f"supersede() got unknown arguments {sorted(unknown)}")
    current = await retrieve(started, key, scope, scope_id, counted=False)
    old = identity_of_entry(current)
    fields = {**STORE_DEFAULTS, "ttl": None, "expires_at": None, "type": current.type}
    write = started.prepare(
        key if new_key is None else new_key,
        value,
        **{**fields, **store_fields, "scope": current.scope, "scope_id": current.scope_id or None},
    )
    write.change = started.change("supersede" if write.identity == old else None, actor, reason)
    closing = started.change("supersede", actor, reason)
    await plan_embeddings(started, [write])
    row = await started.database.run(
        "supersede",
        partial(
            write_superseding,
            started.statements,
            started.tenant,
            old,
            write,
            passage_rows(started, [write]),
            closing,
        ),
    )
    if row is None:
        raise MemoryNotFoundError(old.key)
    return await written(started, write, value, row)


@instrumented("invalidate")
async def invalidate(
    started: Started[V],
    key: str,
    scope: Scope,
    scope_id: str | None,
    at: datetime | None,
    change: Change,
) -> MemoryEntry[V]:
    """Close the validity of the live, valid fact under ``key`` at ``at`` (None: now)."""
    moment = aware_moment(at, "at")
    current = await retrieve(started, key, scope, scope_id, counted=False)
    row = await started.database.fetchrow(
        "invalidate",
        started.statements.close_validity(
            started.tenant, identity_of_entry(current), moment, None, change
        ),
    )
    if row is not None:
        return started.rows.entry(row)
    # Not closed: say why, from what is current now.
    now = await retrieve(started, key, current.scope, current.scope_id, counted=False)
    if moment is not None and now.valid_from and moment < now.valid_from:
        raise MemoryValidationError(
            f"at {moment.isoformat()} is before {key!r} became valid ({now.valid_from.isoformat()})"
        )
    raise MemoryNotFoundError(key)
