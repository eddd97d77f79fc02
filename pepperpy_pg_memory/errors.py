"""The exceptions this library raises: everything is a :class:`MemoryError`.

Each class also derives from the closest built-in exception (``KeyError``, ``ValueError``,
``ConnectionError``, ``TimeoutError``), so code that already catches those keeps working.
The driver's own exception, when there is one, is chained as ``__cause__``.
"""

from __future__ import annotations

import builtins

__all__ = [
    "MemoryError",
    "MemoryConfigurationError",
    "MemoryConnectionError",
    "MemoryTimeoutError",
    "MemoryNotFoundError",
    "AmbiguousKeyError",
    "MemoryValidationError",
    "DimensionMismatchError",
    "EmbedderMismatchError",
    "MemoryIndexError",
    "MemorySchemaError",
    "MemoryPermissionError",
    "MemoryQuotaError",
    "QUOTA_SQLSTATE",
]

STORE_TYPE = "postgres"


class MemoryError(builtins.Exception):  # noqa: A001 - the seed's public name
    """Base class of every error raised by the memory store.

    Attributes:
        store_type: which backend raised it; always ``"postgres"`` here.
    """

    def __init__(self, message: str, *, store_type: str = STORE_TYPE) -> None:
        super().__init__(message)
        self.message = message
        self.store_type = store_type

    def __str__(self) -> str:
        return self.message


class MemoryConfigurationError(MemoryError, ValueError):
    """The configuration is invalid, or the server lacks something the store needs."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class MemoryConnectionError(MemoryError, builtins.ConnectionError):
    """The server could not be reached, or the connection broke and retries ran out."""


class MemoryOutcomeUnknownError(MemoryConnectionError):
    """A write reached the server, then its connection broke before the server said whether
    it committed, and the retries ran out: the write may or may not have taken effect.

    Writes are safe to repeat (storing a memory exactly as it is records no new version), so
    the caller may store again once the database is back, or read the memory to learn what
    it holds. Never raised for a write that is known to have failed.
    """


class MemoryTimeoutError(MemoryConnectionError, builtins.TimeoutError):
    """An operation, or the wait for a free pooled connection, exceeded its timeout."""


class MemoryNotFoundError(MemoryError, KeyError):
    """No live (unexpired) memory has the requested key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no memory with key {key!r}")
        self.key = key

    # KeyError.__str__ would print the repr of the message.
    __str__ = MemoryError.__str__


class AmbiguousKeyError(MemoryError, LookupError):
    """A key was named without its owner, and several owners hold a memory under it.

    A memory is named by its owner and its key: give ``scope=`` (and ``scope_id=``) to say
    whose memory is meant. Nothing was read or changed.

    Attributes:
        key: the key.
        owners: how many owners hold a live memory under it (at least 2).
    """

    def __init__(self, key: str, owners: int) -> None:
        super().__init__(
            f"{owners} owners hold a memory with key {key!r}: pass scope= and scope_id= "
            "to say whose memory is meant"
        )
        self.key = key
        self.owners = owners


class MemoryValidationError(MemoryError, ValueError):
    """An argument (key, value, query, filter, embedding) is not acceptable."""


class DimensionMismatchError(MemoryValidationError):
    """An embedding's length differs from the dimension of the stored vectors."""

    def __init__(self, message: str, *, expected: int, actual: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class EmbedderMismatchError(MemoryError):
    """The table holds vectors of another model than the store's embedder (by name and
    dimension): searching or writing would mix two models' vectors in one index."""

    def __init__(self, message: str, *, recorded: str, current: str) -> None:
        super().__init__(message)
        self.recorded = recorded
        self.current = current


class MemoryIndexError(MemoryError):
    """An index cannot serve the request (e.g. the entry was stored without it)."""


class MemorySchemaError(MemoryError):
    """The table was created by an incompatible version of this library."""


class MemoryPermissionError(MemoryError, builtins.PermissionError):
    """The database refused the operation to this role: a missing grant, or a row-level
    security policy (e.g. a write for another tenant than the session's)."""


QUOTA_SQLSTATE = "PM001"
"""The SQLSTATE the database raises for a write refused by the per-owner quota."""


class MemoryQuotaError(MemoryError):
    """The owner holds ``PostgresConfig.max_memories_per_owner`` memories and none of them
    can be evicted (every one is long-term): nothing was written."""
