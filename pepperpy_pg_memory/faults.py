"""Which driver errors are worth retrying, and what each becomes for the caller."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from .errors import (
    QUOTA_SQLSTATE,
    MemoryConfigurationError,
    MemoryConnectionError,
    MemoryError,
    MemoryPermissionError,
    MemoryQuotaError,
    MemoryTimeoutError,
    MemoryValidationError,
)

__all__ = ["ConnectionLost", "is_transient", "translate", "backoff_delay"]

# By SQLSTATE, as the server sent it: the server going away or not yet accepting, and
# conflicts a retry resolves. Class 08 is every connection exception.
_TRANSIENT_CLASSES = frozenset({"08"})
_TRANSIENT_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: terminated by an administrator, or a fast shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up or shutting down
        "53300",  # too_many_connections
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
    }
)


class ConnectionLost(Exception):
    """A pooled connection turned out to be closed under a statement (the driver says so
    with a plain ``InterfaceError``; the pool replaces the connection, a retry is safe)."""


def is_transient(exc: BaseException) -> bool:
    """True for faults after which running the same idempotent operation again may succeed."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        return sqlstate[:2] in _TRANSIENT_CLASSES or sqlstate in _TRANSIENT_SQLSTATES
    # Without a SQLSTATE: the network, or the driver's own public classes.
    if isinstance(exc, (ConnectionLost, ConnectionError)):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return True
    # Seen when the server ends an idle pooled connection just as a query starts on it
    # ("cannot switch to state ..."): the connection is unusable, a fresh one is fine.
    return isinstance(exc, asyncpg.InternalClientError)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with "equal" jitter: at least half of each step is waited, so the
    retries span a known minimum time (a server restart), and the random half keeps many
    clients from retrying in step."""
    step: float = min(cap, base * (2**attempt))
    return step / 2 + random.uniform(0, step / 2)


def translate(exc: BaseException, operation: str) -> MemoryError:
    """The :class:`MemoryError` that ``exc`` raised during ``operation`` becomes."""
    if isinstance(exc, MemoryError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, asyncpg.QueryCanceledError)):
        return MemoryTimeoutError(f"{operation} timed out")
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return MemoryConfigurationError(
            f"{operation}: authentication failed for the configured user", field="password"
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return MemoryConfigurationError(f"{operation}: {exc}", field="user")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return MemoryConfigurationError(f"{operation}: {exc}", field="database")
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == QUOTA_SQLSTATE:
        return MemoryQuotaError(f"{operation}: {exc}")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return MemoryPermissionError(f"{operation}: the database refused it: {exc}")
    if isinstance(exc, (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)):
        return MemoryValidationError(f"{operation}: the server rejected the data: {exc}")
    if isinstance(exc, OSError):
        return MemoryConnectionError(f"{operation}: cannot reach the database ({exc})")
    if is_transient(exc):
        return MemoryConnectionError(f"{operation} failed: the database connection broke ({exc})")
    return MemoryError(f"{operation} failed: {type(exc).__name__}: {exc}")
