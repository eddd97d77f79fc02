"""What callers hand to the store, checked: writes turned into rows, owners and restrictions
turned into what a statement may touch.

Pure functions and plain data: nothing here talks to the database, so every rule about a
memory's owner, type, indices, fields and expiry is in one place and is checked before any
statement runs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from .config import PostgresConfig
from .errors import MemoryValidationError
from .history import Change
from .limits import MAX_SCOPE_ID_BYTES
from .queries import STAGING_COLUMNS, Restriction
from .types import (
    DOCUMENT_FIELD,
    MANAGED_FIELD,
    STORABLE_INDICES,
    TTL,
    Identity,
    MemoryIndex,
    MemoryItem,
    MemoryScope,
    MemoryType,
    Scope,
)
from .values import (
    check_bytes,
    check_visible,
    encode_checked_json,
    to_json_value,
    validate_key,
)
from .vectors import Vector, content_hash, one_vector

__all__ = [
    "TTL",
    "MemoryItem",
    "Scope",
    "PendingWrite",
    "Vector",
    "as_enum",
    "aware_moment",
    "verbatim",
    "index_set",
    "item_fields",
    "owner",
    "prepare_write",
    "resolve_expiry",
    "restriction",
    "STORE_DEFAULTS",
]

ITEM_FIELDS = frozenset(MemoryItem.__annotations__)
DEFAULT_IMPORTANCE = 0.5
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
    passages: tuple[str, ...] = ()
    passage_vectors: Vector | None = None
    """Filled by the embedding step, one row per passage."""
    valid_from: datetime | None = None
    """None: kept from the memory's live version, or from when it is stored."""
    valid_to: datetime | None = None
    supersedes: str | None = None
    superseded_by: str | None = None
    importance: float = DEFAULT_IMPORTANCE
    change: Change = field(default_factory=Change)
    """What the history records beside the version this write makes."""

    @property
    def owner(self) -> tuple[str, str]:
        """(scope, scope_id) as stored."""
        return self.scope.value, self.scope_id

    @functools.cached_property
    def identity(self) -> Identity:
        """The memory written (its owner and key never change once prepared); made once: a
        batch's bookkeeping asks for it many times."""
        return Identity(self.scope.value, self.scope_id, self.key)

    @property
    def wants_embedding(self) -> bool:
        return MemoryIndex.SEMANTIC in self.indices

    def record(self) -> tuple[Any, ...]:
        """The values in :data:`~.queries.STAGING_COLUMNS` order (the order of the COPY and of
        the single-row upsert's parameters)."""
        columns = {
            "key": self.key,
            "value": self.value,
            "content": self.text,
            "content_hash": self.content_hash,
            "memory_type": self.type.value,
            "scope": self.scope.value,
            "scope_id": self.scope_id,
            "indices": sorted(index.value for index in self.indices),
            "metadata": self.metadata,
            "embedding": self.embedding,
            "ttl": self.ttl,
            "expires_at": self.expires_at,
            "valid_from": self.valid_from,
            "valid_to": self.valid_to,
            "supersedes": self.supersedes,
            "superseded_by": self.superseded_by,
            "importance": self.importance,
        }
        return tuple(columns[name] for name in STAGING_COLUMNS)


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


def _marked(
    metadata: dict[str, Any], key: str, field: str, given: str | None, argument: str
) -> dict[str, Any]:
    """``metadata`` with the adapter marker ``field`` set to ``given`` (an adapter's
    ``argument``); a caller's metadata naming the field otherwise is refused."""
    if field in metadata and metadata[field] != given:
        raise MemoryValidationError(
            f"metadata of {key!r}: {field!r} is reserved for the adapters' own memories"
        )
    if given is None:
        return metadata
    if not isinstance(given, str) or not given:
        raise MemoryValidationError(f"{argument} must be a non-empty str")
    return {**metadata, field: given}


def verbatim(metadata: Mapping[str, Any]) -> bool:
    """Whether a memory is kept as its adapter wrote it (a record or a document): nothing is
    folded into it as a duplicate, and it is never folded into another."""
    return MANAGED_FIELD in metadata or DOCUMENT_FIELD in metadata


def aware_moment(value: datetime | None, name: str) -> datetime | None:
    """``value`` if it is None or a timezone-aware datetime."""
    if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
        raise MemoryValidationError(f"{name} must be a timezone-aware datetime")
    return value


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


def owner(
    scope: Scope, scope_id: str | None, default_scope_id: str
) -> tuple[MemoryScope | None, str | None]:
    """The owner a call names: ``(None, None)`` for no scope, ``''`` as GLOBAL's id, and
    ``default_scope_id`` for a scope given without an id."""
    if scope is None:
        if scope_id is not None:
            raise MemoryValidationError("scope_id needs a scope")
        return None, None
    scope = as_enum(MemoryScope, scope, "scope")
    if scope is MemoryScope.GLOBAL:
        if scope_id:
            raise MemoryValidationError("GLOBAL memories have no scope_id")
        return scope, ""
    if scope_id is None:
        return scope, default_scope_id
    if not isinstance(scope_id, str) or not scope_id:
        raise MemoryValidationError("scope_id must be a non-empty string")
    to_json_value(scope_id, "scope_id")  # NUL and surrogate check
    check_bytes(scope_id, MAX_SCOPE_ID_BYTES, "scope_id")
    return scope, scope_id


def check_key_texts(given: str | Iterable[str] | None, name: str) -> None:
    """Refuse ``keys`` or ``key_prefix`` values PostgreSQL would refuse (NUL characters,
    lone surrogates) or that are not strings, before anything is sent."""
    if given is None:
        return
    for text in [given] if isinstance(given, str) else given:
        if not isinstance(text, str):
            raise MemoryValidationError(f"{name} must be strings, not {type(text).__name__}")
        to_json_value(text, name)


def restriction(
    config: PostgresConfig,
    tenant: str,
    scope: Scope = None,
    scope_id: str | None = None,
    types: Iterable[MemoryType | str] | MemoryType | str | None = None,
    filter: Mapping[str, Any] | None = None,
    **bounds: Any,
) -> Restriction:
    """What a read, search or delete of ``tenant``'s store may see, checked."""
    owner_scope, owner_id = owner(scope, scope_id, config.default_scope_id)
    if isinstance(types, (MemoryType, str)):
        types = [types]
    type_set = (
        frozenset(as_enum(MemoryType, t, "type") for t in types) if types is not None else None
    )
    for name in ("filter", "value_filter"):
        given = filter if name == "filter" else bounds.get(name)
        if given is not None and not isinstance(given, Mapping):
            raise MemoryValidationError(f"{name} must be a mapping")
    for name in ("keys", "key_prefix"):
        check_key_texts(bounds.get(name), name)
    return Restriction(
        tenant=tenant,
        scope=owner_scope,
        scope_id=owner_id,
        types=type_set,
        filter=filter,
        indexed_metadata=config.indexed_fields,
        **bounds,
    )


STORE_DEFAULTS: dict[str, Any] = {
    "type": MemoryType.LONG_TERM,
    "scope": MemoryScope.GLOBAL,
    "scope_id": None,
    "indices": None,
    "metadata": None,
    "embedding": None,
    "text": None,
    "passages": None,
}
"""What ``store()`` gives a field left out (an imported line's, a superseding fact's)."""


def prepare_write(
    config: PostgresConfig,
    text_of: Callable[[Any], str],
    dimension: int,
    key: Any,
    value: Any,
    *,
    type: MemoryType | str,
    scope: MemoryScope | str,
    scope_id: str | None,
    indices: Iterable[MemoryIndex | str] | None,
    metadata: Mapping[str, Any] | None,
    ttl: TTL,
    expires_at: datetime | None,
    embedding: Any = None,
    text: str | None = None,
    passages: Sequence[str] | None = None,
    importance: float = DEFAULT_IMPORTANCE,
    managed_by: str | None = None,
    document_of: str | None = None,
) -> PendingWrite:
    """One write, checked: every rule a memory must meet before anything is sent.

    ``dimension`` is the table's vector dimension, for an ``embedding`` given by the caller.
    """
    # `type` is the memory type here, as in store()'s signature; the builtin is not used.
    memory_type = as_enum(MemoryType, type, "type")
    key = validate_key(key, config.max_key_length)
    owner_scope, owner_id = owner(scope, scope_id, config.default_scope_id)
    if owner_scope is None or owner_id is None:
        raise MemoryValidationError("a memory needs a scope")
    # New names only: memories stored under such names before stay readable by them.
    check_visible(key, "memory key")
    check_visible(owner_id, "scope_id")
    if value is None:
        raise MemoryValidationError(f"value of {key!r} is None: there is nothing to remember")
    # Encoded once: the size check and the database write share the text.
    json_text = encode_checked_json(to_json_value(value))
    size = len(json_text.encode())
    if size > config.max_value_bytes:
        raise MemoryValidationError(
            f"value of {key!r} is {size:,} bytes as JSON; the limit is "
            f"{config.max_value_bytes:,} (PostgresConfig.max_value_bytes)"
        )
    if metadata is None:
        json_metadata: dict[str, Any] = {}
    elif isinstance(metadata, Mapping):
        json_metadata = to_json_value(metadata, "metadata")
    else:
        raise MemoryValidationError("metadata must be a mapping")
    if json_metadata:
        metadata_size = len(encode_checked_json(json_metadata).encode())
        if metadata_size > config.max_metadata_bytes:
            raise MemoryValidationError(
                f"metadata of {key!r} is {metadata_size:,} bytes as JSON; the limit is "
                f"{config.max_metadata_bytes:,} (PostgresConfig.max_metadata_bytes)"
            )
    # The markers are the adapters' alone: a caller who could set MANAGED_FIELD could exempt
    # a record from the quota and put it in an adapter's reads; DOCUMENT_FIELD keeps a memory
    # out of deduplication and consolidation.
    json_metadata = _marked(json_metadata, key, MANAGED_FIELD, managed_by, "managed_by")
    json_metadata = _marked(json_metadata, key, DOCUMENT_FIELD, document_of, "document_of")
    indexed = text_of(value) if text is None else text
    if not isinstance(indexed, str):
        raise MemoryValidationError(
            f"the indexed text must be a str, not {indexed.__class__.__name__}"
        )
    to_json_value(indexed, "indexed text")  # NUL and surrogate check
    indices_to_write = index_set(indices)
    ttl_delta, expiry = resolve_expiry(ttl, expires_at, config.ttl_for(memory_type))
    vector = None
    if embedding is not None:
        if MemoryIndex.SEMANTIC not in indices_to_write:
            raise MemoryValidationError(
                f"{key!r}: an embedding was given but SEMANTIC is not among its indices"
            )
        vector = one_vector(embedding, dimension)
    return PendingWrite(
        key=key,
        value=json_text,
        text=indexed,
        content_hash=content_hash(indexed),
        type=memory_type,
        scope=owner_scope,
        scope_id=owner_id,
        indices=indices_to_write,
        metadata=json_metadata,
        embedding=vector,
        ttl=ttl_delta,
        expires_at=expiry,
        passages=_checked_passages(key, passages, indices_to_write),
        importance=checked_importance(importance),
    )


def checked_importance(importance: Any) -> float:
    """``importance`` as stored: a number in [0, 1]."""
    if isinstance(importance, bool) or not isinstance(importance, (int, float)):
        raise MemoryValidationError("importance must be a number in [0, 1]")
    if not 0.0 <= float(importance) <= 1.0:
        raise MemoryValidationError(f"importance must be in [0, 1], got {importance!r}")
    return float(importance)


MAX_PASSAGES = 64
"""The most passages one memory may carry."""


def _checked_passages(
    key: str, passages: Sequence[str] | None, indices: frozenset[MemoryIndex]
) -> tuple[str, ...]:
    if passages is None:
        return ()
    if isinstance(passages, str) or not isinstance(passages, Sequence):
        raise MemoryValidationError(f"{key!r}: passages must be a list of strings")
    if passages and MemoryIndex.SEMANTIC not in indices:
        raise MemoryValidationError(
            f"{key!r}: passages are embedded, but SEMANTIC is not among its indices"
        )
    if len(passages) > MAX_PASSAGES:
        raise MemoryValidationError(
            f"{key!r} has {len(passages)} passages; the limit is {MAX_PASSAGES}"
        )
    for passage in passages:
        if not isinstance(passage, str):
            raise MemoryValidationError(
                f"{key!r}: a passage must be a str, not {passage.__class__.__name__}"
            )
        to_json_value(passage, "passage")  # NUL and surrogate check
    return tuple(passages)
