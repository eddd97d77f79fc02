"""Which memories keys name: the given owner's, or each key's one live holder."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from ..errors import AmbiguousKeyError
from ..items import Scope, owner
from ..queries import Restriction
from ..types import Identity
from .rows import identity_of
from .started import Started

__all__ = ["resolve", "owners_of", "ambiguous", "check_unambiguous"]


async def resolve(
    started: Started[Any], keys: builtins.list[str], scope: Scope, scope_id: str | None
) -> builtins.list[Identity]:
    """The memories ``keys`` name: the given owner's, or, without a scope, each key's one
    live holder among the owners this store may see (keys nobody holds are left out).

    Raises:
        AmbiguousKeyError: no scope was given and several owners hold one of the keys.
    """
    owner_scope, owner_id = owner(scope, scope_id, started.config.default_scope_id)
    if owner_scope is not None:
        assert owner_id is not None
        return [Identity(owner_scope.value, owner_id, key) for key in keys]
    # A key names its memory whether or not the fact is still valid.
    found = await owners_of(started, keys, replace(started.restriction(), include_invalid=True))
    check_unambiguous(found)
    return found


async def owners_of(
    started: Started[Any], keys: builtins.list[str], restriction: Restriction
) -> builtins.list[Identity]:
    """Every live holder of each of ``keys`` within ``restriction``."""
    rows = await started.database.reading.fetch(
        "lookup", started.statements.owners_of(keys, restriction)
    )
    return [identity_of(row) for row in rows]


async def ambiguous(started: Started[Any], key: str, restriction: Restriction) -> AmbiguousKeyError:
    """The error for a key several owners hold, saying how many."""
    return AmbiguousKeyError(key, len(await owners_of(started, [key], restriction)))


def check_unambiguous(identities: Iterable[Identity]) -> None:
    """Raise :class:`AmbiguousKeyError` for the first key held by several owners."""
    owners: dict[str, int] = {}
    for identity in identities:
        owners[identity.key] = owners.get(identity.key, 0) + 1
    for key, count in owners.items():
        if count > 1:
            raise AmbiguousKeyError(key, count)
