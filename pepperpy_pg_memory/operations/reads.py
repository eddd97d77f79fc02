"""Reads of live memories: by key, by owner, counts, listings, scans."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from ..errors import MemoryNotFoundError, MemoryValidationError
from ..filters import key_path
from ..items import Scope, as_enum, aware_moment, owner, resolve_expiry
from ..metrics import instrumented
from ..models import MemoryEntry, MemoryOwner, StoredValue
from ..queries import Restriction, Touch
from ..sql import Query
from ..types import ArrayPattern, Identity, ListOrder, MemoryScope, MemoryType
from ..values import to_json_value, validate_key
from .naming import ambiguous, check_unambiguous, resolve
from .rows import identity_of
from .started import Started

__all__ = [
    "retrieve",
    "retrieve_many",
    "retrieve_by_owner",
    "values_by_owner",
    "touch",
    "touch_by_owner",
    "exists",
    "count",
    "distinct_metadata",
    "owners",
    "distinct_arrays",
    "list_page",
    "scan",
]

V = TypeVar("V")


async def retrieve(
    started: Started[V],
    key: Any,
    scope: Scope,
    scope_id: str | None,
    include_embedding: bool = False,
    as_of: datetime | None = None,
    include_invalid: bool = False,
    *,
    counted: bool = True,
) -> MemoryEntry[V]:
    """The memory ``key`` names for the owner ``scope``/``scope_id`` (without a scope, its
    one live holder); ``counted=False`` for the store's own look-ups, which are not a
    caller's read of the memory (and read the primary: they precede writes)."""
    checked = started.key(key)
    restriction = started.restriction(
        scope, scope_id, as_of=aware_moment(as_of, "as_of"), include_invalid=include_invalid
    )
    runner = started.reads if counted else started.database.reading
    if as_of is None:
        statement = started.statements.retrieve(checked, restriction, include_embedding)
        rows = await runner.fetch("retrieve", statement)
    else:
        statement = started.statements_as_of.retrieve(checked, restriction, include_embedding)
        rows = await runner.fetch_as_of("retrieve", statement, as_of)
    if not rows:
        raise MemoryNotFoundError(checked)
    if len(rows) > 1:
        raise await ambiguous(started, checked, restriction)
    if counted and as_of is None:
        started.access.note([identity_of(rows[0])])
    return started.rows.entry(rows[0], embedding=include_embedding)


@instrumented("retrieve_many")
async def retrieve_many(
    started: Started[V], keys: builtins.list[str], restriction: Restriction
) -> dict[str, MemoryEntry[V]]:
    """The live memories under ``keys`` within ``restriction``, by key."""
    if not keys:
        return {}
    rows = await started.reads.fetch(
        "retrieve_many", started.statements.retrieve_many(keys, restriction)
    )
    check_unambiguous([identity_of(row) for row in rows])
    return {row["key"]: started.rows.entry(row) for row in rows}


@instrumented("retrieve_many")
async def retrieve_by_owner(
    started: Started[V], names: Iterable[tuple[MemoryScope | str, str | None, str]]
) -> dict[Identity, MemoryEntry[V]]:
    """Live memories of several owners in one round trip, by identity."""
    wanted, rows = await _read_named(
        started, names, "retrieve_many", started.statements.retrieve_many
    )
    return {wanted.identity(row): started.rows.entry(row) for row in rows}


@instrumented("values_by_owner")
async def values_by_owner(
    started: Started[V],
    names: Iterable[tuple[MemoryScope | str, str | None, str]],
    touch: timedelta | float | int | None = None,
    touch_metadata: Mapping[str, Any] | None = None,
) -> dict[Identity, StoredValue]:
    """:func:`retrieve_by_owner`'s memories as their values and moments only; with
    ``touch``, those whose metadata matches ``touch_metadata`` get a new TTL from now (as
    :func:`touch_by_owner` gives one), read with it."""
    delta = None if touch is None else _refresh_ttl(started, touch)
    if delta is None:
        wanted, rows = await _read_named(
            started, names, "values_by_owner", started.statements.values_by_owner
        )
    else:
        wanted = _named(started, names)
        rows = []
        if wanted:
            rows = await _touch_and_read(started, wanted, delta, touch_metadata)
    value = started.rows.value
    return {
        wanted.identity(row): StoredValue(
            value(row["value"]),
            row["metadata"],
            row["created_at"],
            row["updated_at"],
            row["expires_at"],
        )
        for row in rows
    }


async def _touch_and_read(
    started: Started[Any],
    wanted: _Named,
    ttl: timedelta,
    metadata: Mapping[str, Any] | None,
) -> builtins.list[asyncpg.Record]:
    """The rows of :func:`values_by_owner` for ``wanted``, touched first (on the primary: a
    read that writes)."""
    statements, refresh = started.statements, None
    if statements.touches_while_reading:
        refresh = Touch(ttl, started.config.ttl_refresh_slack, metadata)
    else:
        await _touch_identities(started, wanted.identities, ttl, metadata)
    statement = statements.values_by_owner(wanted.keys, wanted.restriction(started), refresh)
    return await started.database.fetch("values_by_owner", statement)


async def _read_named(
    started: Started[V],
    names: Iterable[tuple[MemoryScope | str, str | None, str]],
    operation: str,
    statement: Callable[[builtins.list[str], Restriction], Query],
) -> tuple[_Named, builtins.list[asyncpg.Record]]:
    """The memories ``names`` names, read by ``statement`` (of their keys and owners); no
    round trip when there are none."""
    wanted = _named(started, names)
    if not wanted:
        return wanted, []
    rows = await started.reads.fetch(operation, statement(wanted.keys, wanted.restriction(started)))
    return wanted, rows


class _Named:
    """The memories a read by owner names, checked: each identity made once (the caller's own
    :class:`Identity` when it already is one), and found again for a row without a new
    tuple. A burst of thousands of reads makes every object per memory count: each is work
    for the garbage collector."""

    def __init__(self) -> None:
        self._by_owner: dict[str, dict[str, dict[str, Identity]]] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, scope: str, scope_id: str, key: str, name: Any) -> None:
        keys = self._by_owner.setdefault(scope, {}).setdefault(scope_id, {})
        if key not in keys:
            same = type(name) is Identity and name == (scope, scope_id, key)
            keys[key] = name if same else Identity(scope, scope_id, key)
            self.count += 1

    @property
    def keys(self) -> builtins.list[str]:
        return sorted(
            {key for ids in self._by_owner.values() for keys in ids.values() for key in keys}
        )

    @property
    def identities(self) -> builtins.list[Identity]:
        return [
            identity
            for ids in self._by_owner.values()
            for keys in ids.values()
            for identity in keys.values()
        ]

    def restriction(self, started: Started[Any]) -> Restriction:
        return replace(started.restriction(), identities=frozenset(self.identities))

    def identity(self, row: Any) -> Identity:
        return self._by_owner[row["scope"]][row["scope_id"]][row["key"]]


def _named(
    started: Started[Any], names: Iterable[tuple[MemoryScope | str, str | None, str]]
) -> _Named:
    """``names`` checked: each owner once, each key against the store's limit."""
    checked_owners: dict[Any, dict[Any, tuple[str, str]]] = {}
    wanted = _Named()
    longest = started.config.max_key_length
    for name in names:
        scope, scope_id, key = name
        checked = checked_owners.get(scope, {}).get(scope_id)
        if checked is None:
            owner_scope, owner_id = owner(scope, scope_id, started.config.default_scope_id)
            assert owner_scope is not None and owner_id is not None
            checked = (owner_scope.value, owner_id)
            checked_owners.setdefault(scope, {})[scope_id] = checked
        wanted.add(checked[0], checked[1], validate_key(key, longest), name)
    return wanted


@instrumented("touch")
async def touch(
    started: Started[Any],
    keys: Iterable[str],
    ttl: timedelta | float | int,
    scope: Scope,
    scope_id: str | None,
) -> int:
    """A new time-to-live ``ttl`` from now for the live memories ``keys`` name."""
    checked = started.keys(keys)
    delta = _refresh_ttl(started, ttl)
    if not checked or delta is None:
        return 0
    identities = await resolve(started, checked, scope, scope_id)
    if not identities:
        return 0
    return await _touch_identities(started, identities, delta, None)


@instrumented("touch")
async def touch_by_owner(
    started: Started[Any],
    names: Iterable[tuple[MemoryScope | str, str | None, str]],
    ttl: timedelta | float | int,
) -> int:
    """:func:`touch` of memories named with their owners, any number of owners at once."""
    delta = _refresh_ttl(started, ttl)
    wanted = _named(started, names)
    if not wanted or delta is None:
        return 0
    return await _touch_identities(started, wanted.identities, delta, None)


def _refresh_ttl(started: Started[Any], ttl: timedelta | float | int) -> timedelta | None:
    """A refresh's time-to-live, checked (None: the memories would never expire)."""
    delta, _ = resolve_expiry(ttl, None, started.config.ttl_for(MemoryType.LONG_TERM))
    return delta


async def _touch_identities(
    started: Started[Any],
    identities: builtins.list[Identity],
    ttl: timedelta,
    metadata: Mapping[str, Any] | None,
) -> int:
    """How many of the memories ``identities`` name (whose metadata matches ``metadata``)
    :func:`touch` extended: in one statement, or one per owner on a cluster."""
    slack = started.config.ttl_refresh_slack
    statements = started.statements
    if started.layout.distributed:
        # One statement per owner: each then runs on that owner's node alone.
        by_owner: dict[tuple[str, str], builtins.list[Identity]] = {}
        for identity in identities:
            by_owner.setdefault((identity.scope, identity.scope_id), []).append(identity)
        batches = list(by_owner.values())
    else:
        batches = [identities]
    extended = 0
    for batch in batches:
        statement = statements.touch(started.tenant, batch, ttl, slack, metadata)
        if statements.refreshes is None:
            extended += await started.database.execute("touch", statement)  # rows updated
        else:
            extended += int(await started.database.fetchval("touch", statement))
    return extended


@instrumented("exists")
async def exists(started: Started[Any], key: str, restriction: Restriction) -> bool:
    """Whether a live memory is stored under ``key`` within ``restriction``."""
    found = await started.reads.fetchval("exists", started.statements.exists(key, restriction))
    if found > 1:
        raise await ambiguous(started, key, restriction)
    return bool(found)


@instrumented("count")
async def count(started: Started[Any], restriction: Restriction) -> int:
    """How many live memories match."""
    return int(await started.reads.fetchval("count", started.statements.count(restriction)))


@instrumented("distinct_metadata")
async def distinct_metadata(
    started: Started[Any], key: str, restriction: Restriction, limit: int
) -> builtins.list[tuple[Any, int]]:
    """The distinct values of metadata ``key`` among live memories, with their counts."""
    rows = await started.reads.fetch(
        "distinct_metadata",
        started.statements.distinct_metadata(key_path(key), restriction, limit),
    )
    return [(row["value"], int(row["memories"])) for row in rows]


@instrumented("owners")
async def owners(
    started: Started[Any],
    scope: MemoryScope | str | None,
    restriction: Restriction,
    limit: int,
    after: tuple[MemoryScope | str, str] | None,
) -> builtins.list[MemoryOwner]:
    """The owners of ``scope`` (None: any) holding live memories within ``restriction``, each
    with how many, a page of ``limit`` after the owner ``after``."""
    start: tuple[str, str] | None = None
    if after is not None:
        if not (isinstance(after, tuple) and len(after) == 2 and isinstance(after[1], str)):
            raise MemoryValidationError("after must be a (scope, scope_id) pair")
        to_json_value(after[1], "after")  # NUL and surrogate check
        start = (as_enum(MemoryScope, after[0], "scope").value, after[1])
    restriction = replace(
        restriction, scope=None if scope is None else as_enum(MemoryScope, scope, "scope")
    )
    rows = await started.reads.fetch("owners", started.statements.owners(restriction, limit, start))
    return [
        MemoryOwner(MemoryScope(row["scope"]), row["scope_id"], int(row["memories"]))
        for row in rows
    ]


@instrumented("distinct_arrays")
async def distinct_arrays(
    started: Started[Any],
    key: str,
    restriction: Restriction,
    patterns: builtins.list[ArrayPattern],
    depth: int | None,
    limit: int,
    offset: int,
) -> builtins.list[builtins.list[str]]:
    """The distinct string arrays at metadata ``key`` matching ``patterns``, paged."""
    query = started.statements.distinct_arrays(
        key_path(key), restriction, patterns=patterns, depth=depth, limit=limit, offset=offset
    )
    rows = await started.reads.fetch("distinct_arrays", query)
    return [list(row["value"]) for row in rows]


@instrumented("list")
async def list_page(
    started: Started[V],
    restriction: Restriction,
    *,
    limit: int,
    offset: int,
    order_by: ListOrder,
    descending: bool,
    after: MemoryEntry[Any] | None,
) -> builtins.list[MemoryEntry[V]]:
    """A page of live memories in ``order_by`` order, after the entry ``after`` if given."""
    query = started.statements.list_page(
        restriction,
        limit=limit,
        offset=offset,
        order_by=order_by,
        descending=descending,
        after=None if after is None else _position(after, order_by),
    )
    return [started.rows.entry(row) for row in await started.reads.fetch("list", query)]


async def scan(
    started: Started[V], restriction: Restriction, page_size: int, include_embedding: bool
) -> AsyncIterator[MemoryEntry[V]]:
    """Every matching memory, in owner-then-key order, a keyset page at a time."""
    after: Identity | None = None
    while True:
        rows = await started.database.reading.fetch(
            "scan",
            started.statements.scan_page(restriction, after, page_size, include_embedding),
        )
        for row in rows:
            yield started.rows.entry(row, embedding=include_embedding)
        if len(rows) < page_size:
            return
        after = identity_of(rows[-1])


def _position(entry: MemoryEntry[Any], order_by: ListOrder) -> tuple[Any, ...]:
    """Where ``entry`` sits in a list ordered by ``order_by`` (for keyset paging)."""
    scope = entry.scope.value if isinstance(entry.scope, MemoryScope) else entry.scope
    first = {"created_at": entry.created_at, "updated_at": entry.updated_at}.get(order_by)
    identity = (entry.key, scope, entry.scope_id)
    return identity if first is None else (first, *identity)
