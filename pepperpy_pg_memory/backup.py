"""The export format: JSON Lines that restore every field of a memory exactly.

The first line is a header (``{"format": "pepperpy-memory-export", "version": 1, ...}``); each
following line is one memory with its key, value, indexed text, type, owner (tenant, scope,
scope_id), metadata, indices, ``created_at``, ``updated_at`` and ``expires_at`` (null: never),
and, when exported with embeddings, its vector; since version 2, ``passages`` (the texts of
a memory that has any; they are embedded again on import). Files written by release 0.1 (no
header; key, value, type, scope, scope_id, metadata, expires_at) are read too.

Pure functions: turning entries into lines and lines into checked fields. Running the export
and import is :meth:`PostgresStorage.export_jsonl` / :meth:`PostgresStorage.import_jsonl`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import MemoryValidationError
from .models import MemoryEntry

__all__ = [
    "FORMAT",
    "VERSION",
    "ImportReport",
    "Restored",
    "header",
    "line_of",
    "parse_line",
]

FORMAT = "pepperpy-memory-export"
VERSION = 2
"""Raised when a field is added; readers accept every version up to theirs. 2 added
``passages``."""

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
    }
)


def header(dimension: int, embeddings: bool) -> str:
    """The first line of an export."""
    return json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "dimension": dimension,
            "embeddings": embeddings,
            "exported_at": datetime.now(timezone.utc).isoformat(),
        }
    )


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
        "expires_at": entry.expires_at.isoformat() if entry.expires_at else None,
    }
    if entry.embedding is not None:
        record["embedding"] = entry.embedding
    if passages:
        record["passages"] = passages
    return json.dumps(record, ensure_ascii=False)


@dataclass
class Restored:
    """One line's memory: the fields ``store`` takes, and the moments it keeps."""

    fields: dict[str, Any]
    tenant: str
    created_at: datetime | None
    updated_at: datetime | None


@dataclass
class ImportReport:
    """What an import did. ``errors`` holds ``(line number, message)`` for every line that was
    skipped (not a memory) or failed (a memory that may not be stored); nothing of those lines
    was written."""

    stored: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "skipped": self.skipped, "failed": self.failed}


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


def parse_line(line: str, with_embeddings: bool) -> Restored:
    """A line as the fields to store, or a :class:`MemoryValidationError` saying what is
    wrong. ``with_embeddings``: use the line's vector (the store checks its dimension)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MemoryValidationError(f"not JSON ({exc.msg})") from None
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
    for name in ("type", "scope", "scope_id", "metadata", "indices", "text", "passages"):
        if data.get(name) is not None:
            fields[name] = data[name]
    if fields.get("scope_id") == "" and fields.get("scope", "global") == "global":
        del fields["scope_id"]  # GLOBAL's (an empty id for another scope is refused later)
    if with_embeddings and data.get("embedding") is not None:
        fields["embedding"] = data["embedding"]
    tenant = data.get("tenant", "")
    if not isinstance(tenant, str):
        raise MemoryValidationError("tenant must be a string")
    return Restored(fields, tenant, _moment(data, "created_at"), _moment(data, "updated_at"))
