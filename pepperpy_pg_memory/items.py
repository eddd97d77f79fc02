"""What callers hand to ``store``/``store_many``, checked and turned into rows to write.

Pure functions and plain data: nothing here talks to the database, so every rule about a
memory's type, indices, fields and expiry is in one place and is checked before any write.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from .errors import MemoryValidationError
from .types import STORABLE_INDICES, Identity, MemoryIndex, MemoryScope, MemoryType

__all__ = [
    "TTL",
    "MemoryItem",
    "PendingWrite",
    "Vector",
    "as_enum",
    "index_set",
    "item_fields",
    "resolve_expiry",
]

Vector = npt.NDArray[np.float32]

TTL = timedelta | float | int | Literal["never"] | None
"""A time-to-live: a timedelta or seconds; ``"never"``; None for the memory type's default."""

MemoryItem = Mapping[str, Any]
"""One entry for :meth:`PostgresStorage.store_many`: a mapping with ``key`` and ``value`` and
optionally ``type``, ``scope``, ``scope_id``, ``indices``, ``metadata``, ``ttl``,
``expires_at``, ``embedding`` and ``text`` (the text to index), each overriding the call's
default. A ``(key, value)`` pair is accepted too."""

ITEM_FIELDS = frozenset(
    {
        "key",
        "value",
        "type",
        "scope",
        "scope_id",
        "indices",
        "metadata",
        "ttl",
        "expires_at",
        "embedding",
        "text",
    }
)
DEFAULT_INDICES = frozenset({MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL})


@dataclass
class PendingWrite:
    """One validated write, in the column order of ``STAGING_COLUMNS``."""

    key: str
    value: Any
    text: str
    content_hash: bytes
    type: MemoryType
    scope: MemoryScope
    scope_id: str
    indices: frozenset[MemoryIndex]
    metadata: dict[str, Any]
    embedding: Vector | None
    ttl: timedelta | None
    expires_at: datetime | None

    @property
    def identity(self) -> Identity:
        return Identity(self.scope.value, self.scope_id, self.key)

    @property
    def wants_embedding(self) -> bool:
        return MemoryIndex.SEMANTIC in self.indices

    def record(self) -> tuple[Any, ...]:
        return (
            self.key,
            self.value,
            self.text,
            self.content_hash,
            self.type.value,
            self.scope.value,
            self.scope_id,
            sorted(index.value for index in self.indices),
            self.metadata,
            self.embedding,
            self.ttl,
            self.expires_at,
        )


E = TypeVar("E", MemoryType, MemoryScope, MemoryIndex)


def as_enum(kind: type[E], value: Any, name: str) -> E:
    """``value`` as a member of ``kind`` (members and their string values are accepted)."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise MemoryValidationError(f"invalid {name} {value!r}: use one of {choices}") from None


def index_set(
    indices: Iterable[MemoryIndex | str] | MemoryIndex | str | None,
) -> frozenset[MemoryIndex]:
    """The indices a memory is written to; None means semantic and contextual."""
    if indices is None:
        return DEFAULT_INDICES
    if isinstance(indices, (str, MemoryIndex)):
        indices = [indices]
    result: set[MemoryIndex] = set()
    for item in indices:
        index = as_enum(MemoryIndex, item, "index")
        if index is MemoryIndex.HYBRID:
            result.update(DEFAULT_INDICES)
        elif index in STORABLE_INDICES:
            result.add(index)
        # TEMPORAL needs no index of its own: every memory can be listed by time.
    return frozenset(result)


def item_fields(item: Any, position: int) -> dict[str, Any]:
    """The fields of one ``store_many`` item; ``position`` names it in errors."""
    if isinstance(item, tuple) and len(item) == 2:
        return {"key": item[0], "value": item[1]}
    if not isinstance(item, Mapping):
        raise MemoryValidationError(
            f"item {position}: expected a mapping with 'key' and 'value' or a (key, value) pair"
        )
    unknown = set(item) - ITEM_FIELDS
    if unknown:
        raise MemoryValidationError(f"item {position}: unknown fields {sorted(unknown)}")
    if "key" not in item or "value" not in item:
        raise MemoryValidationError(f"item {position}: needs both 'key' and 'value'")
    return dict(item)


def resolve_expiry(
    ttl: TTL, expires_at: datetime | None, default: timedelta | None
) -> tuple[timedelta | None, datetime | None]:
    """``(ttl, expires_at)`` to store: at most one is set; ``default`` applies when neither
    was given (the memory type's time-to-live)."""
    if expires_at is not None:
        if ttl is not None:
            raise MemoryValidationError("give either ttl or expires_at, not both")
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise MemoryValidationError("expires_at must be a timezone-aware datetime")
        if expires_at <= datetime.now(timezone.utc):
            raise MemoryValidationError(f"expires_at {expires_at.isoformat()} is in the past")
        return None, expires_at
    if ttl is None:
        return default, None
    if ttl == "never":
        return None, None
    if isinstance(ttl, bool) or not isinstance(ttl, (timedelta, int, float)):
        raise MemoryValidationError("ttl must be a timedelta, a number of seconds, 'never' or None")
    if isinstance(ttl, timedelta):
        delta = ttl
    else:
        seconds = float(ttl)
        # timedelta() itself would raise OverflowError/ValueError for these.
        if not math.isfinite(seconds) or seconds > timedelta.max.total_seconds():
            raise MemoryValidationError(f"ttl must be positive and finite, got {ttl!r}")
        delta = timedelta(seconds=seconds)
    if delta <= timedelta(0):
        raise MemoryValidationError(f"ttl must be positive and finite, got {ttl!r}")
    return delta, None
