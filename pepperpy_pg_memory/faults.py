"""Which driver errors are worth retrying, and what each becomes for the caller."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from .errors import (
    MemoryConfigurationError,
    MemoryConnectionError,
    MemoryError,
    MemoryTimeoutError,
    MemoryValidationError,
)

__all__ = ["is_transient", "translate", "backoff_delay"]

# Server going away or not yet accepting, and conflicts a retry resolves.
_TRANSIENT_POSTGRES = (
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01: terminated by administrator / fast shutdown
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.SerializationError,  # 40001
    asyncpg.DeadlockDetectedError,  # 40P01
)


def is_transient(exc: BaseException) -> bool:
    """True for faults after which running the same idempotent operation again may succeed."""
    if isinstance(exc, _TRANSIENT_POSTGRES):
        return True
    if isinstance(exc, (asyncpg.ConnectionDoesNotExistError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, asyncpg.exceptions._base.InternalClientError):
        # Seen when the server ends an idle pooled connection just as a query starts on it
        # ("cannot switch to state ..."): the connection is unusable, a fresh one is fine.
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return "connection is closed" in text or "connection was closed" in text
    return False


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
    if isinstance(exc, (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)):
        return MemoryValidationError(f"{operation}: the server rejected the data: {exc}")
    if isinstance(exc, OSError):
        return MemoryConnectionError(f"{operation}: cannot reach the database ({exc})")
    if is_transient(exc):
        return MemoryConnectionError(f"{operation} failed: the database connection broke ({exc})")
    return MemoryError(f"{operation} failed: {type(exc).__name__}: {exc}")
