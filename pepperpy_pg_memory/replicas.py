"""Reads on streaming replicas: which replica serves a read, when it may, and when not.

A :class:`ReadRouter` is a :class:`~.database.Runner` like the primary's
:class:`~.database.Database`: the store sends the statements that only read (searches,
``retrieve``, ``list``, ``count``, ``similar``, ``stats``) through it, and everything else to
the primary. Per read it picks the healthy replica with the fewest reads under way (turns
break ties) and falls back to the primary whenever a replica cannot serve — so no read fails
because a replica is down.

*Read-your-writes.* After each operation on the primary that may have written, the primary's
WAL insert position (at or past the commit) becomes the store's *horizon*. A replica that has
not replayed the horizon is polled (``pg_last_wal_replay_lsn()``) for up to
``replica_wait_timeout`` seconds; then the read goes to the primary.

*Health.* A background task checks every replica each ``replica_check_interval`` seconds:
reachable, still a standby, and how far behind. Lag is measured against the primary's own
positions sampled by the same task — the time since the primary passed the position the
replica has replayed — so an idle primary does not make a replica look stale (replay
timestamps would). A replica that fails a read, fails a check or lags more than
``replica_max_lag`` leaves the rotation until a check finds it well again.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from .config import PostgresConfig
from .database import Database, Runner, T, VectorTypesMissing, Work
from .errors import MemoryError
from .faults import is_transient
from .metrics import Metrics
from .queries import Query
from .shutdown import cancel_and_wait
from .sql import Session

__all__ = ["ReadRouter", "describe_dsn"]

logger = logging.getLogger(__name__)

PRIMARY_POSITION = Query("SELECT pg_current_wal_insert_lsn()")
WAL_GEOMETRY = Query(
    "SELECT current_setting('wal_block_size')::int AS page, "
    "pg_size_bytes(current_setting('wal_segment_size')) AS segment"
)
REPLAYED = Query("SELECT pg_last_wal_replay_lsn()")
REPLICA_STATE = Query("SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn() AS replayed")
# Page headers in the WAL: a segment's first page has the long one.
_PAGE_HEADER = 24
_SEGMENT_HEADER = 40
# How long the primary's sampled positions are kept: lag is only told up to this far back.
_SAMPLES_KEPT = 600


def describe_dsn(dsn: str) -> str:
    """``dsn`` without its password: host (or socket folder), port and database."""
    parts = urlsplit(dsn)
    query = dict(item.split("=", 1) for item in parts.query.split("&") if "=" in item and item)
    host = parts.hostname or query.get("host", "localhost")
    port = parts.port or query.get("port", 5432)
    database = parts.path.lstrip("/") or "postgres"
    return f"{host}:{port}/{database}"


def record_end(position: int, page: int, segment: int) -> int:
    """Where the last WAL record ends, given the primary's insert ``position``.

    The insert position sits past the header of the page it is on; a replica reports the end
    of the last record it replayed. When the last record filled its page, the two differ by
    a header although the replica has everything — and on an idle primary they would stay
    apart, so the header is taken off.
    """
    if position % segment == _SEGMENT_HEADER:
        return position - _SEGMENT_HEADER
    if position % page == _PAGE_HEADER:
        return position - _PAGE_HEADER
    return position


@dataclass
class _Replica:
    name: str
    dsn: str
    database: Database
    healthy: bool = False
    replayed: int = 0
    """The last replay position seen (a pg_lsn as an integer)."""
    lag: float | None = None
    reads: int = 0
    errors: int = 0
    in_flight: int = 0
    waits: int = 0
    """Reads that waited for this replica to replay the store's own writes."""
    last_error: str | None = None
    replaying_schema: bool = False
    """Reachable, but without pgvector's types yet: it has not replayed a new database's
    schema."""
    operations: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "healthy": self.healthy,
            "lag_seconds": self.lag,
            "reads": self.reads,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "waits": self.waits,
            "last_error": self.last_error,
            "operations": dict(self.operations),
        }


class ReadRouter(Runner):
    """Runs read-only work on a replica of the primary when one can serve it.

    Args:
        config: the store's settings (``read_replicas`` and the ``replica_*`` fields).
        primary: the primary's pool; reads fall back to it.
        metrics: where pool waits are counted.
        dsns: the replicas' URLs.
    """

    def __init__(
        self, config: PostgresConfig, primary: Database, metrics: Metrics, dsns: list[str]
    ) -> None:
        self.config = config
        self.primary = primary
        # A replica pool keeps no idle connections (asyncpg would reconnect to a stopped
        # replica in the background and log every attempt) and never retries: the primary
        # is the retry.
        replica_config = config.model_copy(update={"min_size": 0, "retry_attempts": 0})
        self.replicas = [
            _Replica(
                f"replica {number} ({describe_dsn(dsn)})", dsn, Database(replica_config, metrics)
            )
            for number, dsn in enumerate(dsns, 1)
        ]
        self.primary_reads = 0
        """Reads that went to the primary (no healthy replica, or one that could not serve)."""
        self._horizon = 0
        self._horizon_known = True
        self._note_failures = 0
        self._turns = itertools.count()
        # (monotonic time, primary position) samples, oldest first; see _lag.
        self._positions: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=_SAMPLES_KEPT
        )
        self._watch_task: asyncio.Task[None] | None = None
        self._page, self._segment = 8192, 16 * 1024 * 1024

    # --- lifecycle -------------------------------------------------------------------------
    async def open(self, vector_schema: str, settings: dict[str, str]) -> None:
        """Open a pool per replica, check them all once, and start watching them. A replica
        that is down now is simply out of rotation until a check finds it up."""
        geometry = await self.primary.fetchrow("replicas", WAL_GEOMETRY)
        assert geometry is not None
        self._page, self._segment = int(geometry["page"]), int(geometry["segment"])
        for replica in self.replicas:
            await replica.database.open(replica.dsn, vector_schema, settings)
        if self.config.read_your_writes:
            self.primary.after_write = self._note_write
        await self.check()
        # In a new database a replica may not have replayed the schema the migrations just
        # made: it is waited for as a connection would be, rather than left out of rotation.
        deadline = time.monotonic() + self.config.connect_timeout
        while any(r.replaying_schema for r in self.replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            await self.check()
        for replica in self.replicas:
            if replica.replaying_schema:  # not lag any more: a replica of something else?
                self._failed(
                    replica,
                    MemoryError(
                        f"no pgvector types after {self.config.connect_timeout:g}s: is it a "
                        "replica of this database?"
                    ),
                )
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        task, self._watch_task = self._watch_task, None
        await cancel_and_wait(task)
        if self.primary.after_write == self._note_write:
            self.primary.after_write = None
        for replica in self.replicas:
            await replica.database.close()

    # --- the store's writes ----------------------------------------------------------------
    async def _note_write(self, session: Session) -> None:
        """After an operation on the primary: what a later read must see is up to here."""
        try:
            position = self._end(await session.fetchval(PRIMARY_POSITION))
        except Exception as exc:  # noqa: BLE001 - the write itself succeeded
            # Unknown: the next read asks the primary for its position instead.
            logger.debug("could not read the primary's WAL position: %s", exc)
            self._note_failures += 1
            self._horizon_known = False
            return
        self._horizon = max(self._horizon, position)

    def _end(self, position: Any) -> int:
        return record_end(int(position), self._page, self._segment)

    async def _current_horizon(self) -> int:
        if not self._horizon_known:
            failures = self._note_failures
            position = await self._primary_position()  # past every write that committed
            self._horizon = max(self._horizon, position)
            # Known again, unless another note failed meanwhile (its write may be later).
            self._horizon_known = failures == self._note_failures
        return self._horizon

    async def mark_written(self) -> None:
        """Take the primary's current position as the horizon (after writes made outside
        the pool, such as migrations)."""
        self._horizon_known = False
        await self._current_horizon()

    # --- reads -----------------------------------------------------------------------------
    async def run(self, operation: str, work: Work[T]) -> T:
        replica = self._choose()
        if replica is not None and await self._caught_up(replica):
            replica.in_flight += 1
            try:
                result = await replica.database.run(operation, work)
            except MemoryError as exc:
                cause = exc.__cause__ or exc
                if isinstance(cause, asyncpg.DataError):
                    # About the statement's values (a division by zero, a NUL in a text):
                    # the primary would refuse them too, and the replica is fine.
                    raise
                self._failed(replica, cause)
            else:
                replica.reads += 1
                replica.operations[operation] += 1
                return result
            finally:
                replica.in_flight -= 1
        self.primary_reads += 1
        return await self.primary.reading.run(operation, work)

    def _choose(self) -> _Replica | None:
        healthy = [replica for replica in self.replicas if replica.healthy]
        if not healthy:
            return None
        least = min(replica.in_flight for replica in healthy)
        candidates = [replica for replica in healthy if replica.in_flight == least]
        return candidates[next(self._turns) % len(candidates)]

    async def _caught_up(self, replica: _Replica) -> bool:
        """Whether ``replica`` has replayed this store's writes, waiting a little if not."""
        if not self.config.read_your_writes:
            return True
        try:
            horizon = await self._current_horizon()
        except MemoryError:
            return False  # the primary will serve the read, or say what is wrong
        if replica.replayed >= horizon:
            return True
        replica.waits += 1
        deadline = time.monotonic() + self.config.replica_wait_timeout
        pause = 0.001
        while True:
            try:
                replica.replayed = int(await replica.database.fetchval("replicas", REPLAYED))
            except MemoryError as exc:
                self._failed(replica, exc.__cause__ or exc)
                return False
            if replica.replayed >= horizon:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)

    def _failed(self, replica: _Replica, exc: BaseException) -> None:
        replica.errors += 1
        replica.last_error = f"{type(exc).__name__}: {exc}"
        if replica.healthy:
            logger.warning(
                "%s out of rotation: %s%s",
                replica.name,
                replica.last_error,
                "" if is_transient(exc) else " (reads go to the primary)",
            )
        replica.healthy = False

    # --- health ----------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.replica_check_interval)
            try:
                await self.check()
            except MemoryError as exc:
                # The primary is unreachable: the replicas keep their last verdicts.
                logger.warning("could not check the replicas: %s", exc)

    async def check(self) -> None:
        """Check every replica now: reachable, a standby, and within ``replica_max_lag``."""
        position = await self._primary_position()
        self._positions.append((time.monotonic(), position))
        await asyncio.gather(*(self._check(replica) for replica in self.replicas))

    async def _primary_position(self) -> int:
        return self._end(await self.primary.reading.fetchval("replicas", PRIMARY_POSITION))

    async def _check(self, replica: _Replica) -> None:
        timeout = min(self.config.connect_timeout, max(self.config.replica_check_interval, 1.0))
        try:
            state = await asyncio.wait_for(
                replica.database.fetchrow("replicas", REPLICA_STATE), timeout
            )
        except VectorTypesMissing as exc:
            replica.lag = None
            if self._watch_task is not None:  # long after start: a fault like any other
                self._failed(replica, exc)
                return
            # At start, in a new database: the replica has not replayed the schema yet. It
            # is behind, not broken (see open()).
            replica.healthy = False
            replica.replaying_schema = True
            return
        except (MemoryError, asyncio.TimeoutError) as exc:
            replica.lag = None
            self._failed(replica, exc.__cause__ or exc)
            return
        assert state is not None
        replica.replaying_schema = False
        if not state["standby"] or state["replayed"] is None:
            replica.lag = None
            self._failed(replica, MemoryError("the server is not a standby replica"))
            return
        replica.replayed = max(replica.replayed, int(state["replayed"]))
        replica.lag = self._lag(replica.replayed)
        if replica.lag > self.config.replica_max_lag:
            self._failed(
                replica,
                MemoryError(
                    f"{replica.lag:.1f}s behind the primary (replica_max_lag "
                    f"{self.config.replica_max_lag:g}s)"
                ),
            )
            return
        if not replica.healthy:
            logger.info("%s in rotation", replica.name)
        replica.healthy = True

    def _lag(self, replayed: int) -> float:
        """Seconds since the primary was first seen past ``replayed`` (0: caught up)."""
        now = time.monotonic()
        for moment, position in self._positions:
            if position > replayed:
                return now - moment
        return 0.0

    def stats(self) -> list[dict[str, Any]]:
        return [replica.as_dict() for replica in self.replicas]
