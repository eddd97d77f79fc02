"""Rows of the memory and history tables as the API's models."""

from __future__ import annotations

import builtins
import functools
import typing
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import asyncpg
import numpy as np
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from ..errors import MemoryValidationError
from ..models import MemoryEntry, MemorySearchResult, MemoryVersion, trusted, trusted_from
from ..queries import AS_STORED_COLUMNS
from ..types import Identity, MemoryIndex, MemoryScope, MemoryType

__all__ = ["RowMapper", "identity_of", "owner_of", "vector_list", "declared_value_type"]

V = TypeVar("V")
E = TypeVar("E", MemoryType, MemoryScope)

_MEMORY_TYPES = {member.value: member for member in MemoryType}
_SCOPES = {member.value: member for member in MemoryScope}
_SCORE_PARTS = (
    "semantic_score",
    "contextual_score",
    "relevance_score",
    "recency_score",
    "importance_score",
)


class RowMapper(Generic[V]):
    """Turns rows into entries, search results and versions; values are validated into
    ``value_type`` when it is a pydantic model (other declared types are hints: a value that
    does not match one is returned rather than made unreadable)."""

    def __init__(self, value_type: Any) -> None:
        self._adapter: TypeAdapter[Any] | None = None
        if isinstance(value_type, type) and issubclass(value_type, BaseModel):
            self._adapter = TypeAdapter(value_type)

    def value(self, raw: Any) -> V:
        if self._adapter is None:
            return typing.cast(V, raw)
        try:
            return typing.cast(V, self._adapter.validate_python(raw))
        except PydanticValidationError as exc:
            raise MemoryValidationError(
                f"a stored value does not fit the storage's value type: {exc.errors()[0]['msg']}"
            ) from None

    def entry(self, row: asyncpg.Record, embedding: bool = False) -> MemoryEntry[V]:
        # Row mapping is most of a fast read's Python time: one dict, built once, kept by
        # the entry; enums by dictionary (the enum call is a few times slower).
        vector = row["embedding"] if embedding else None
        values = {
            "key": row["key"],
            "value": self.value(row["value"]),
            "text": row["content"],
            "type": _member(_MEMORY_TYPES, MemoryType, row["memory_type"]),
            "scope": _member(_SCOPES, MemoryScope, row["scope"]),
            "scope_id": row["scope_id"],
            "indices": _indices(tuple(row["indices"])),
            "metadata": row["metadata"],
            "embedding": None if vector is None else vector_list(vector),
            "deduplicated": False,
        }
        for column in AS_STORED_COLUMNS:
            values[column] = row[column]
        return trusted_from(MemoryEntry, values)

    def result(
        self, row: asyncpg.Record, index: MemoryIndex, embedding: bool = False
    ) -> MemorySearchResult[V]:
        # Only some statements give a ranked score or score parts (fusion's, ranking's).
        ranked = _optional_float(row["ranked_score"]) if "ranked_score" in row else None
        values: dict[str, Any] = {
            "entry": self.entry(row, embedding=embedding),
            "score": float(row["score"]) if ranked is None else ranked,
            "index_type": index,
        }
        for part in _SCORE_PARTS:
            values[part] = _optional_float(row[part]) if part in row else None
        return trusted_from(MemorySearchResult, values)

    def version(self, row: asyncpg.Record, embedding: bool = False) -> MemoryVersion[V]:
        vector = row["embedding"] if embedding else None
        return trusted(
            MemoryVersion,
            key=row["key"],
            scope=MemoryScope(row["scope"]),
            scope_id=row["scope_id"],
            version=row["version"],
            operation=row["operation"],
            value=self.value(row["value"]),
            text=row["content"],
            type=MemoryType(row["memory_type"]),
            indices=_indices(tuple(row["indices"])),
            metadata=row["metadata"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            valid_from=row["valid_from"],
            valid_to=row["valid_to"],
            supersedes=row["supersedes"],
            superseded_by=row["superseded_by"],
            actor=row["actor"],
            reason=row["reason"],
            at=row["at"],
            embedding=None if vector is None else vector_list(vector),
            importance=row["importance"],
        )


def identity_of(row: asyncpg.Record) -> Identity:
    """The memory a row is of (scope, scope_id, key)."""
    return Identity(row["scope"], row["scope_id"], row["key"])


def identity_of_entry(entry: MemoryEntry[Any]) -> Identity:
    """The memory an entry is (as :func:`identity_of` for its row; ``''`` for GLOBAL)."""
    return Identity(entry.scope.value, entry.scope_id, entry.key)


def owner_of(row: asyncpg.Record) -> tuple[str, str]:
    """The owner a row is of (scope, scope_id), as stored."""
    return row["scope"], row["scope_id"]


def vector_list(vector: Any) -> builtins.list[float]:
    """A stored vector as floats (pgvector >= 0.4 decodes to Vector/HalfVector objects, 0.3
    to numpy arrays)."""
    values = vector.to_list() if hasattr(vector, "to_list") else np.asarray(vector).tolist()
    return [float(x) for x in values]


@functools.lru_cache(maxsize=64)
def _indices(names: tuple[str, ...]) -> frozenset[MemoryIndex]:
    # A handful of distinct combinations exist: built once each, not per row.
    return frozenset(MemoryIndex(name) for name in names)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _member(members: Mapping[str, E], kind: type[E], value: str) -> E:
    """``kind(value)`` by dictionary (an unknown value raises as the enum call does)."""
    found = members.get(value)
    return found if found is not None else kind(value)


def declared_value_type(store: Any, generic: type) -> Any:
    """The ``V`` of ``generic[str, V](...)`` (a store made as ``PostgresStorage[str, Note]``),
    or of a subclass's ``class Notes(PostgresStorage[str, Note])``; None when not declared."""
    origin = getattr(store, "__orig_class__", None)
    candidates = [origin] if origin is not None else []
    for klass in type(store).__mro__:
        candidates += getattr(klass, "__orig_bases__", ())
    for candidate in candidates:
        if typing.get_origin(candidate) is generic:
            args = typing.get_args(candidate)
            if len(args) == 2:
                return args[1]
    return None
