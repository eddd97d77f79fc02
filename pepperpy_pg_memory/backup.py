"""The export format: JSON Lines that restore every field of a memory exactly.

The first line is a header (``{"format": "pepperpy-memory-export", "version": 1, ...}``); each
following line is one memory with its key, value, indexed text, type, owner (tenant, scope,
scope_id), metadata, indices, ``created_at``, ``updated_at`` and ``expires_at`` (null: never),
and, when exported with embeddings, its vector; since version 2, ``passages`` (the texts of
a memory that has any; they are embedded again on import); since version 3, its ``version``
and validity (``valid_from``, ``valid_to``, ``supersedes``, ``superseded_by``), and, in an
export made with history (the header says ``"history": true``), one line per recorded version
after the memories (``{"kind": "version", ...}``), deleted memories' included. Files written
by release 0.1 (no header; key, value, type, scope, scope_id, metadata, expires_at) are read
too.

Pure functions: turning entries into lines and lines into checked fields. Running the export
and import is :meth:`PostgresStorage.export_jsonl` / :meth:`PostgresStorage.import_jsonl`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import MemoryValidationError
from .models import ImportReport, MemoryEntry, MemoryVersion

__all__ = [
    "FORMAT",
    "VERSION",
    "ImportReport",
    "Restored",
    "RestoredVersion",
    "version_line",
    "header",
    "line_of",
    "parse_line",
]

FORMAT = "pepperpy-memory-export"
VERSION = 3
"""Raised when a field is added; readers accept every version up to theirs. 2 added
``passages``; 3 added versions, validity and history lines."""

_FIELDS_V1 = frozenset(
    {
        "key",
        "value",
        "text",
        "type",
        "tenant",
        "scope",
        "scope_id",
        "metadata",
        "indices",
        "created_at",
        "updated_at",
        "expires_at",
        "embedding",
        "passages",
        "version",
        "valid_from",
        "valid_to",
        "supersedes",
        "superseded_by",
        "importance",
        "access_count",
        "last_accessed_at",
    }
)
VERSION_KIND = "version"
_VERSION_FIELDS = frozenset(
    {
        "kind",
        "tenant",
        "scope",
        "scope_id",
        "key",
        "version",
        "operation",
        "value",
        "text",
        "type",
        "indices",
        "metadata",
        "created_at",
        "expires_at",
        "valid_from",
        "valid_to",
        "supersedes",
        "superseded_by",
        "actor",
        "reason",
        "at",
        "embedding",
        "importance",
    }
)


def header(dimension: int, embeddings: bool, history: bool = False) -> str:
    """The first line of an export."""
    return json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "dimension": dimension,
            "embeddings": embeddings,
            "history": history,
            "exported_at": datetime.now(timezone.utc).isoformat(),
        }
    )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def line_of(
    entry: MemoryEntry[Any], tenant: str, value: Any, passages: list[str] | None = None
) -> str:
    """One memory as a line (``value`` as JSON data; ``entry.embedding`` included if set)."""
    record: dict[str, Any] = {
        "key": entry.key,
        "value": value,
        "text": entry.text,
        "type": entry.type.value,
        "tenant": tenant,
        "scope": entry.scope.value,
        "scope_id": entry.scope_id,
        "metadata": entry.metadata,
        "indices": sorted(index.value for index in entry.indices),
        "created_at": entry.created_at.isoformat(),
        "updated_at": entry.updated_at.isoformat(),
        "expires_at": _iso(entry.expires_at),
        "version": entry.version,
        "valid_from": _iso(entry.valid_from),
        "valid_to": _iso(entry.valid_to),
        "supersedes": entry.supersedes,
        "superseded_by": entry.superseded_by,
        "importance": entry.importance,
        "access_count": entry.access_count,
        "last_accessed_at": _iso(entry.last_accessed_at),
    }
    if entry.embedding is not None:
        record["embedding"] = entry.embedding
    if passages:
        record["passages"] = passages
    return json.dumps(record, ensure_ascii=False)


def version_line(version: MemoryVersion[Any], tenant: str, value: Any) -> str:
    """One recorded version as a line (``value`` as JSON data; its vector if set)."""
    record: dict[str, Any] = {
        "kind": VERSION_KIND,
        "tenant": tenant,
        "scope": version.scope.value,
        "scope_id": version.scope_id,
        "key": version.key,
        "version": version.version,
        "operation": version.operation,
        "value": value,
        "text": version.text,
        "type": version.type.value,
        "indices": sorted(index.value for index in version.indices),
        "metadata": version.metadata,
        "created_at": version.created_at.isoformat(),
        "expires_at": _iso(version.expires_at),
        "valid_from": _iso(version.valid_from),
        "valid_to": _iso(version.valid_to),
        "supersedes": version.supersedes,
        "superseded_by": version.superseded_by,
        "actor": version.actor,
        "reason": version.reason,
        "at": version.at.isoformat(),
        "importance": version.importance,
    }
    if version.embedding is not None:
        record["embedding"] = version.embedding
    return json.dumps(record, ensure_ascii=False)


@dataclass
class Restored:
    """One line's memory: the fields ``store`` takes, and the moments it keeps."""

    fields: dict[str, Any]
    tenant: str
    created_at: datetime | None
    updated_at: datetime | None
    version: int | None = None
    validity: dict[str, Any] = field(default_factory=dict)
    """``valid_from``, ``valid_to``, ``supersedes``, ``superseded_by`` as exported."""
    reads: tuple[int, datetime] | None = None
    """``access_count`` and ``last_accessed_at``, when the memory had been read."""


@dataclass
class RestoredVersion:
    """One history line, checked: the columns of a version (see ``schema.VERSIONED_COLUMNS``
    and the history table) but the content hash and the vector's type, which the store
    adds."""

    tenant: str
    scope: str
    scope_id: str
    key: str
    version: int
    operation: str
    value: Any
    text: str
    type: str
    indices: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    valid_from: datetime | None
    valid_to: datetime | None
    supersedes: str | None
    superseded_by: str | None
    actor: str | None
    reason: str | None
    at: datetime
    embedding: list[float] | None
    importance: float = 0.5


def read_header(line: str) -> dict[str, Any] | None:
    """The header, if ``line`` is one; an error for a newer version than this reader's."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise MemoryValidationError(
            f"this export has format version {version!r}; this release reads up to {VERSION}: "
            "upgrade pepperpy-pg-memory"
        )
    return data


def _moment(data: dict[str, Any], name: str) -> datetime | None:
    raw = data.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise MemoryValidationError(f"{name} must be an ISO 8601 string or null")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise MemoryValidationError(f"{name} {raw!r} is not an ISO 8601 moment") from None
    if moment.tzinfo is None:
        raise MemoryValidationError(f"{name} {raw!r} has no time zone")
    return moment


def parse_line(line: str, with_embeddings: bool) -> Restored | RestoredVersion:
    """A line as the fields to store (or, for a history line, the version to record), or a
    :class:`MemoryValidationError` saying what is wrong. ``with_embeddings``: use the line's
    vector (the store checks its dimension)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MemoryValidationError(f"not JSON ({exc.msg})") from None
    if isinstance(data, dict) and data.get("kind") == VERSION_KIND:
        return _parse_version(data, with_embeddings)
    if not isinstance(data, dict) or "key" not in data or "value" not in data:
        raise MemoryValidationError("needs an object with key and value")
    unknown = set(data) - _FIELDS_V1
    if unknown:
        raise MemoryValidationError(f"unknown fields {sorted(unknown)}")
    expires_at = _moment(data, "expires_at")
    fields: dict[str, Any] = {
        "key": data["key"],
        "value": data["value"],
        # A memory exported without an expiry never expires: it must not get its type's
        # default time-to-live on the way back.
        "ttl": "never" if expires_at is None else None,
        "expires_at": expires_at,
    }
    for name in (
        "type",
        "scope",
        "scope_id",
        "metadata",
        "indices",
        "text",
        "passages",
        "importance",
    ):
        if data.get(name) is not None:
            fields[name] = data[name]
    if fields.get("scope_id") == "" and fields.get("scope", "global") == "global":
        del fields["scope_id"]  # GLOBAL's (an empty id for another scope is refused later)
    if with_embeddings and data.get("embedding") is not None:
        fields["embedding"] = data["embedding"]
    tenant = data.get("tenant", "")
    if not isinstance(tenant, str):
        raise MemoryValidationError("tenant must be a string")
    validity = {
        "valid_from": _moment(data, "valid_from"),
        "valid_to": _moment(data, "valid_to"),
        "supersedes": _text(data, "supersedes"),
        "superseded_by": _text(data, "superseded_by"),
    }
    return Restored(
        fields,
        tenant,
        _moment(data, "created_at"),
        _moment(data, "updated_at"),
        _version_number(data, required=False),
        validity,
        _reads(data),
    )


def _reads(data: dict[str, Any]) -> tuple[int, datetime] | None:
    count, last = data.get("access_count", 0), _moment(data, "last_accessed_at")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise MemoryValidationError("access_count must be a non-negative integer")
    return (count, last) if count and last is not None else None


def _text(data: dict[str, Any], name: str, required: bool = False) -> str | None:
    raw = data.get(name)
    if raw is None and not required:
        return None
    if not isinstance(raw, str) or "\x00" in raw:
        raise MemoryValidationError(f"{name} must be a string")
    return raw


def _version_number(data: dict[str, Any], required: bool) -> int | None:
    raw = data.get("version")
    if raw is None and not required:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw < 2**31:
        raise MemoryValidationError("version must be a positive integer")
    return raw


def _parse_version(data: dict[str, Any], with_embeddings: bool) -> RestoredVersion:
    unknown = set(data) - _VERSION_FIELDS
    if unknown:
        raise MemoryValidationError(f"unknown fields {sorted(unknown)}")
    if "value" not in data or data["value"] is None:
        raise MemoryValidationError("a version needs a value")
    indices = data.get("indices")
    if not isinstance(indices, list) or not all(isinstance(i, str) for i in indices):
        raise MemoryValidationError("indices must be a list of strings")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise MemoryValidationError("metadata must be an object")
    created_at, at = _moment(data, "created_at"), _moment(data, "at")
    if created_at is None or at is None:
        raise MemoryValidationError("a version needs created_at and at")
    embedding = data.get("embedding") if with_embeddings else None
    if embedding is not None and not (
        isinstance(embedding, list) and all(isinstance(x, (int, float)) for x in embedding)
    ):
        raise MemoryValidationError("embedding must be a list of numbers")
    version = _version_number(data, required=True)
    assert version is not None
    return RestoredVersion(
        tenant=_text(data, "tenant", required=True) or "",
        scope=_text(data, "scope", required=True) or "",
        scope_id=_text(data, "scope_id", required=True) or "",
        key=_text(data, "key", required=True) or "",
        version=version,
        operation=_text(data, "operation", required=True) or "",
        value=data["value"],
        text=_text(data, "text", required=True) or "",
        type=_text(data, "type", required=True) or "",
        indices=indices,
        metadata=metadata,
        created_at=created_at,
        expires_at=_moment(data, "expires_at"),
        valid_from=_moment(data, "valid_from"),
        valid_to=_moment(data, "valid_to"),
        supersedes=_text(data, "supersedes"),
        superseded_by=_text(data, "superseded_by"),
        actor=_text(data, "actor"),
        reason=_text(data, "reason"),
        at=at,
        embedding=embedding,
        importance=_importance(data),
    )


def _importance(data: dict[str, Any]) -> float:
    raw = data.get("importance", 0.5)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= 1:
        raise MemoryValidationError("importance must be a number in [0, 1]")
    return float(raw)
