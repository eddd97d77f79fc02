"""``Database``: the connection pool of one store, and how statements run on it.

It owns what every statement needs and none should repeat: the pool and its lifecycle, the
check that calls come from the loop the pool belongs to, acquiring a connection within
``pool_timeout``, retrying transient faults with backoff, and turning driver errors into
:class:`~pepperpy_pg_memory.MemoryError`. The store hands it a :class:`~.queries.Query`; what
a statement means is not its business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Generic, TypeVar

import asyncpg
from pgvector.asyncpg import register_vector

from .config import PostgresConfig
from .errors import (
    MemoryConnectionError,
    MemoryError,
    MemoryOutcomeUnknownError,
    MemoryTimeoutError,
)
from .faults import ConnectionLost, backoff_delay, is_transient, translate
from .history import AS_OF_SETTING, settings_query
from .metrics import Metrics
from .sql import Batch, Query, Session
from .values import decode_json, encode_json

__all__ = ["Database", "Runner", "connect", "in_one_transaction", "unreachable"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
GENERIC_PLAN = {"plan_cache_mode": "force_generic_plan"}
_PLAN_ONCE = "SET plan_cache_mode = force_generic_plan"
_PLAN_EACH = "RESET plan_cache_mode"  # to the session's own: force_custom_plan
CACHEABLE_STATEMENT_BYTES = 64 * 1024
"""The longest statement asyncpg keeps prepared on a connection. Its default (15 KiB) left
out every owner's HYBRID search (16–18 KiB of SQL), which was parsed and analysed again,
after a round trip of its own to prepare it, on every call (and any longer word search
planned anew instead of reusing its generic plan)."""
Work = Callable[[Session], Awaitable[T]]


class PlannedOnce(Generic[T]):
    """Work whose statements run under generic plans, each planned once per connection (see
    :meth:`Database.run`)."""

    __slots__ = ("work",)

    def __init__(self, work: Work[T]) -> None:
        self.work = work

    async def __call__(self, session: Session) -> T:
        return await self.work(session)


if sys.version_info >= (3, 11):

    async def _acquire(pool: asyncpg.Pool, timeout: float) -> Any:
        # asyncio.timeout rather than acquire(timeout=): asyncpg's wait_for runs the
        # acquisition as a task of its own, an extra turn of the loop per operation.
        async with asyncio.timeout(timeout):
            return await pool.acquire()

else:  # pragma: no cover - Python 3.10

    async def _acquire(pool: asyncpg.Pool, timeout: float) -> Any:
        return await pool.acquire(timeout=timeout)


async def retrying(
    config: PostgresConfig, operation: str, attempt: Callable[[], Awaitable[T]]
) -> T:
    """Run ``attempt`` until it succeeds, retrying transient faults with backoff; any other
    failure (or the last transient one) is raised as a :class:`MemoryError`."""
    for number in range(config.retry_attempts + 1):
        try:
            return await attempt()
        except MemoryError:
            raise
        except Exception as exc:
            if number < config.retry_attempts and is_transient(exc):
                delay = backoff_delay(number, config.retry_base_delay, config.retry_max_delay)
                logger.warning(
                    "%s: transient fault (%s), retry %d in %.2fs",
                    operation,
                    type(exc).__name__,
                    number + 1,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            raise translate(exc, operation) from exc
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.asynccontextmanager
async def connect(config: PostgresConfig, dsn: str) -> AsyncIterator[Session]:
    """A session on a connection of its own, outside the pool (migrations, index builds that
    may not run in a transaction), connected with retries like everything else and closed
    after."""
    connection = await retrying(
        config, "connect", lambda: asyncpg.connect(dsn, timeout=config.connect_timeout)
    )
    session = Session(connection)
    try:
        yield session
    finally:
        await session.close()


async def unreachable(dsn: str, timeout: float) -> str | None:
    """Why nothing answers at ``dsn``'s address, after one attempt (no retries); None when
    something answered (a refused password is the store's start to report)."""
    try:
        connection = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return str(getattr(exc, "strerror", None) or type(exc).__name__)
    except Exception:
        return None
    await connection.close()
    return None


class VectorTypesMissing(MemoryError):
    """The server has no pgvector types (yet): a replica that has not replayed the
    extension's creation in a new database."""


class Runner:
    """How statements run, whatever server runs them: the statement helpers over one
    :meth:`run` (the primary's pool, or a read router that picks a replica)."""

    async def run(self, operation: str, work: Work[T]) -> T:
        raise NotImplementedError

    @property
    def distributed(self) -> bool:
        """Whether the statements run on a Citus cluster (settings then go by SET LOCAL)."""
        return False

    async def fetch(
        self, operation: str, query: Query, *, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.run(
            operation, lambda session: session.fetch(query, timeout=timeout)
        )
        return rows

    async def fetch_with_settings(
        self,
        operation: str,
        query: Query,
        settings: Mapping[str, str],
        *,
        timeout: float | None = None,
    ) -> list[asyncpg.Record]:
        """Like :meth:`fetch`, in a read-only transaction with ``settings`` (name → value)
        in force for it alone (``set_config(…, true)``, i.e. ``SET LOCAL``)."""
        setter = settings_query(settings, self.distributed)

        async def work(session: Session) -> list[asyncpg.Record]:
            async with session.transaction(readonly=True):
                await session.execute(setter)
                return await session.fetch(query, timeout=timeout)

        return await self.run(operation, work)

    async def fetch_with_generic_plan(
        self, operation: str, query: Query, *, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        """Like :meth:`fetch`, planned once per connection and statement shape.

        The pool's sessions plan every execution for its values (vector searches need it);
        a statement whose plan does not depend on them but whose planning costs more than
        its execution (the BM25 search's many CTEs) runs with a cached generic plan.
        """
        return await self.run(
            operation, PlannedOnce(lambda session: session.fetch(query, timeout=timeout))
        )

    async def fetch_as_of(
        self,
        operation: str,
        query: Query,
        moment: datetime,
        *,
        generic_plan: bool = False,
        timeout: float | None = None,
    ) -> list[asyncpg.Record]:
        """Like :meth:`fetch`, for a statement reading the memories as of ``moment`` (it
        names the moment through a transaction setting; see ``history.as_of_source``)."""
        return await self.fetch_with_settings(
            operation,
            query,
            {
                AS_OF_SETTING: moment.isoformat(),
                **(GENERIC_PLAN if generic_plan else {}),
            },
            timeout=timeout,
        )

    async def fetchrow(
        self, operation: str, query: Query, *, timeout: float | None = None
    ) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.run(
            operation, lambda session: session.fetchrow(query, timeout=timeout)
        )
        return row

    async def fetchval(self, operation: str, query: Query, *, timeout: float | None = None) -> Any:
        return await self.run(operation, lambda session: session.fetchval(query, timeout=timeout))

    async def execute(self, operation: str, query: Query, *, timeout: float | None = None) -> int:
        """Run a statement; returns how many rows it affected."""
        status: str = await self.run(
            operation, lambda session: session.execute(query, timeout=timeout)
        )
        return affected(status)

    async def executemany(
        self, operation: str, batch: Batch, *, timeout: float | None = None
    ) -> None:
        """Run one statement once per row of ``batch``, in one round trip."""
        await self.run(operation, lambda session: session.execute_batch(batch, timeout=timeout))

    async def execute_all(
        self, operation: str, queries: Sequence[Query], *, timeout: float | None = None
    ) -> None:
        """Run ``queries`` in order in one transaction."""
        await self.run(operation, partial(in_one_transaction, queries, timeout))


class Database(Runner):
    """The pool of one store and the one way statements reach it.

    Args:
        config: pool sizes, timeouts and retry settings.
        metrics: where the number of tasks waiting for a connection is kept.
    """

    def __init__(self, config: PostgresConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dsn = ""  # where the pool connects, once open (for run_alone)
        self.after_write: Callable[[Session], Awaitable[None]] | None = None
        """Run on the connection after every operation that may have written (with read
        replicas: to note the WAL position reads must wait for)."""
        self.transaction_settings: str | None = None
        """Statements (SET LOCAL …) every operation runs first, in a transaction around it:
        on a Citus cluster, how the settings the triggers read reach the workers."""
        self.reading: Runner = _PrimaryReads(self)
        """The same pool for statements that only read but must read the primary (history,
        scans, look-ups before a write): they set no read-your-writes horizon."""
        self._planning_once: set[int] = set()
        """The pooled connections (by server process) whose session plans generically now
        (see :meth:`_plan_for`)."""

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise MemoryError("the storage is not started: await storage.start() first")
        return self._pool

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    @property
    def distributed(self) -> bool:
        return self.transaction_settings is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the pool belongs to; None when closed."""
        return self._loop if self._pool is not None else None

    async def open(self, dsn: str, vector_schema: str, settings: dict[str, str]) -> None:
        """Open the pool; every connection gets pgvector's codecs, binary jsonb (so that
        COPY can carry it) and ``settings``."""
        config = self.config

        async def init(conn: asyncpg.Connection) -> None:
            try:
                await register_vector(conn, schema=vector_schema)
            except ValueError as exc:  # asyncpg's "unknown type"
                raise VectorTypesMissing(f"{exc} (pgvector's types are not there)") from exc
            await conn.set_type_codec(
                "jsonb",
                schema="pg_catalog",
                encoder=lambda value: b"\x01" + encode_json(value).encode(),
                decoder=lambda data: decode_json(data[1:]),
                format="binary",
            )

        async def create() -> asyncpg.Pool:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=config.min_size,
                max_size=config.max_size,
                command_timeout=config.command_timeout,
                timeout=config.connect_timeout,
                init=init,
                reset=_keep_session,
                server_settings=settings,
                max_cacheable_statement_size=CACHEABLE_STATEMENT_BYTES,
            )
            assert pool is not None
            return pool

        self._loop = asyncio.get_running_loop()
        self._dsn = dsn
        self._pool = await retrying(config, "open pool", create)

    async def close(self) -> None:
        """Close the pool (terminate it if closing hangs or the server is gone). Idempotent."""
        pool, self._pool = self._pool, None
        self._planning_once.clear()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=self.config.command_timeout)
            except (asyncio.TimeoutError, asyncpg.InterfaceError, OSError):
                pool.terminate()

    async def expire_connections(self) -> None:
        """Make the pool replace its connections (their cached statements are stale)."""
        await self.pool.expire_connections()
        self._planning_once.clear()

    # --- running ----------------------------------------------------------------------------
    async def _plan_for(self, conn: Any, pid: int, work: Work[Any]) -> None:
        """Give ``conn``'s session (server process ``pid``) the plan mode ``work`` runs under:
        generic for :class:`PlannedOnce` work, else each execution planned for its values.

        A session setting, changed only when the mode changes, before any transaction (one
        rolled back would undo it): a word search run in a transaction of its own with the
        setting made local cost three round trips, 0.45 ms of a 2.2 ms search. On a cluster
        the settings go by SET LOCAL in each operation's transaction (transaction_settings),
        and no statement plans generically there.
        """
        if self.transaction_settings is not None:
            return
        once = isinstance(work, PlannedOnce)
        if once == (pid in self._planning_once):
            return
        # A change cut short (a cancelled caller) may or may not have reached the session:
        # it is then taken for generic, which the next operation of the other kind resets.
        # (Taken for custom, vector searches could run under generic plans unnoticed.)
        self._planning_once.add(pid)
        await conn.execute(_PLAN_ONCE if once else _PLAN_EACH)
        if not once:
            self._planning_once.discard(pid)

    def check_loop(self, operation: str) -> None:
        """Refuse a call from another event loop than the pool's: asyncpg connections belong
        to the loop that opened them."""
        if asyncio.get_running_loop() is not self._loop:
            raise MemoryError(
                f"{operation}: this store was started on another event loop; call it from "
                "that loop, or through pepperpy_pg_memory.runner.BackgroundStorage"
            )

    async def _work_in(self, session: Session, work: Work[T]) -> T:
        if self.transaction_settings is None:
            return await work(session)
        async with session.transaction():
            await session.execute(Query(self.transaction_settings))
            return await work(session)

    async def run_alone(self, operation: str, work: Work[T]) -> T:
        """Run ``work`` on a connection of its own, outside the pool and outside any
        transaction (for statements that may not run in one, such as CREATE INDEX
        CONCURRENTLY), closed after; transient faults are retried like everything else."""
        self.check_loop(operation)
        dsn = self._dsn

        async def attempt() -> T:
            async with connect(self.config, dsn) as session:
                return await work(session)

        return await retrying(self.config, operation, attempt)

    async def run(self, operation: str, work: Work[T], *, visible_to_reads: bool = True) -> T:
        """Run ``work`` on a pooled connection, retrying transient faults.

        Every caller's ``work`` is idempotent (reads, upserts, deletes by key or condition),
        so running it again after a broken connection cannot duplicate anything.
        ``visible_to_reads=False`` says that later reads need not see what ``work`` did: it
        only reads, or writes bookkeeping such as read counts (no :attr:`after_write`, so a
        read on a replica does not wait for it).
        """
        pool = self.pool
        self.check_loop(operation)
        config = self.config
        after_write = self.after_write
        # Whether some attempt's statements reached the server: a write whose connection
        # then broke may have committed.
        sent = False

        async def attempt() -> T:
            nonlocal sent
            self.metrics.waiting += 1
            try:
                conn = await _acquire(pool, config.pool_timeout)
            except asyncio.TimeoutError:
                raise MemoryTimeoutError(
                    f"{operation}: no free database connection within "
                    f"{config.pool_timeout:g}s (max_size={config.max_size}); raise "
                    "max_size or pool_timeout, or run fewer operations at once"
                ) from None
            finally:
                self.metrics.waiting -= 1
            pid: int | None = None
            try:
                sent = True
                session = Session(conn)
                pid = _server_process(conn)
                await self._plan_for(conn, pid, work)
                result = await self._work_in(session, work)
                if after_write is not None and visible_to_reads:
                    await after_write(session)
                return result
            except Exception as exc:
                unusable = _unusable(conn, exc)
                if unusable or is_transient(exc):
                    # Never hand a broken connection back for reuse; the pool opens a new one.
                    # (If it died on its own, asyncpg has already taken it back: nothing to do.)
                    if pid is not None:
                        self._planning_once.discard(pid)
                    with contextlib.suppress(asyncpg.InterfaceError):
                        conn.terminate()
                if unusable:
                    raise ConnectionLost(str(exc)) from exc
                raise
            finally:
                try:
                    await pool.release(conn)
                except (asyncpg.InterfaceError, asyncpg.InternalClientError):
                    # Its reset failed (a protocol left mid-operation): the connection is
                    # terminated, and the outcome is the work's, not the release's.
                    with contextlib.suppress(asyncpg.InterfaceError):
                        conn.terminate()

        try:
            return await retrying(config, operation, attempt)
        except MemoryTimeoutError:
            raise  # the server cancels a statement that timed out: it did not commit
        except MemoryConnectionError as exc:
            if not (sent and visible_to_reads):
                raise
            raise MemoryOutcomeUnknownError(
                f"{operation}: the connection broke after the write was sent and the retries "
                "ran out, so whether it took effect is unknown; writing it again is safe "
                f"({exc})"
            ) from exc


def _server_process(conn: Any) -> int:
    """The server process of a pooled connection: which session it is (a new connection
    is a new process)."""
    pid: int = conn.get_server_pid()
    return pid


def _unusable(conn: Any, exc: BaseException) -> bool:
    """Whether ``exc`` left the connection unusable: it died under the statement, or its
    protocol was left mid-operation (the driver then refuses everything, a rollback
    included, with "another operation is in progress"; seen when the server ends a backend
    as a statement starts on it)."""
    if isinstance(exc, asyncpg.InterfaceError) and _is_broken(conn):
        return True
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, asyncpg.InternalClientError) or (
            isinstance(seen, asyncpg.InterfaceError)
            and "another operation is in progress" in str(seen)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_broken(conn: Any) -> bool:
    """Whether a pooled connection died under a statement. asyncpg hands a connection that
    closed back to the pool at once, and its proxy then refuses every call, ``is_closed``
    included."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


class _PrimaryReads(Runner):
    """:class:`Database` for statements that only read (see ``Database.reading``)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def run(self, operation: str, work: Work[T]) -> T:
        return await self.database.run(operation, work, visible_to_reads=False)

    @property
    def distributed(self) -> bool:
        return self.database.distributed


async def in_one_transaction(
    queries: Sequence[Query], timeout: float | None, session: Session
) -> None:
    """Run ``queries`` in order in ``session``, all or none (a savepoint inside a
    transaction)."""
    async with session.transaction():
        for query in queries:
            await session.execute(query, timeout=timeout)


def affected(status: str) -> int:
    """Rows a command affected, from its status ("DELETE 42" -> 42; 0 for other commands)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to undo. asyncpg rolls back any open transaction itself, and
    this store keeps no session state (no LISTEN or session advisory locks; its one session
    SET, the plan mode, is tracked per connection by Database._plan_for, which sets it
    before each operation that needs the other), so the default RESET ALL round trip on
    every release would only cost latency."""
