"""Read replicas on a real primary and a real streaming replica.

The module's cluster is an embedded server of its own with one embedded replica
(``embedded_replicas=1``: a base backup streaming from it). The tests name that replica in
``read_replicas`` like any other server's, and hurt it: pause its replay, stop and restart it.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from helpers import until
from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryConfigurationError,
    MemoryNotFoundError,
    MemoryQuery,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.embedded_replicas import (
    EmbeddedReplica,
    replica_folder,
    start_replica,
    stop_replica,
)
from pepperpy_pg_memory.replicas import describe_dsn, record_end
from pepperpy_pg_memory.runner import BackgroundStorage

READS = {
    "search",
    "retrieve",
    "retrieve_many",
    "exists",
    "count",
    "owners",
    "list",
    "similar",
    "stats",
    "distinct_metadata",
    "distinct_arrays",
}


@dataclass
class Cluster:
    primary: str
    replica: str
    data_dir: Path
    handle: Any
    embedded: EmbeddedReplica
    server: Any
    """The primary's embedded server (its ``uri(database)``)."""

    def config(self, **overrides: Any) -> PostgresConfig:
        values: dict[str, Any] = {
            "dsn": self.primary,
            "table": f"r_{uuid.uuid4().hex[:10]}",
            "read_replicas": [self.replica],
            "replica_check_interval": 0.1,
            "retry_attempts": 2,
            "retry_base_delay": 0.05,
            "retry_max_delay": 0.2,
        }
        values.update(overrides)
        return PostgresConfig(**values)

    async def on_replica(self, sql: str) -> Any:
        conn = await asyncpg.connect(self.replica)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    def stop_replica(self) -> None:
        stop_replica(self.handle, self.embedded)

    def start_replica(self) -> None:
        start_replica(self.handle, self.embedded)


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    data_dir = Path(tempfile.mkdtemp(prefix="pepperpy-replicas-")) / "postgres"
    holder = PostgresStorage[str, Any](
        PostgresConfig(data_dir=data_dir, embedded_replicas=1), HashingEmbedder(64)
    )
    await holder.start()
    try:
        server = holder._attached.server
        assert server is not None
        (embedded,) = holder._attached.replicas
        assert embedded.data_dir == replica_folder(data_dir, 1)
        yield Cluster(
            primary=server.uri("postgres"),
            replica=embedded.uri("postgres"),
            data_dir=data_dir,
            handle=server.handle,
            embedded=embedded,
            server=server,
        )
    finally:
        await holder.close()


async def _store(config: PostgresConfig) -> PostgresStorage[str, Any]:
    store = PostgresStorage[str, Any](config, HashingEmbedder(64))
    await store.start()
    return store


def _replica(stats: dict[str, Any]) -> dict[str, Any]:
    (replica,) = stats["replicas"]
    return replica  # type: ignore[no-any-return]


async def _until(condition: Any, seconds: float = 10.0) -> None:
    await until(condition, seconds, "the replica's state")


async def test_reads_go_to_the_replica_and_writes_to_the_primary(cluster: Cluster) -> None:
    # Routing, not replay speed: on a loaded machine a read waits for the replica to replay
    # the writes before it (half a second by default, then the primary answers).
    store = await _store(cluster.config(replica_wait_timeout=60, replica_max_lag=120))
    try:
        await store.store("a", {"content": "ana likes green tea"}, scope="user", scope_id="ana")
        await store.store_many(
            {"key": f"n{i}", "value": {"content": f"note {i}"}, "scope": "user", "scope_id": "ana"}
            for i in range(5)
        )
        await store.delete("n4", scope="user", scope_id="ana")
        mine: dict[str, Any] = {"scope": "user", "scope_id": "ana"}
        for index in ("semantic", "contextual", "hybrid"):
            found = await store.search(
                MemoryQuery(query="green tea", index_type=index, limit=3, **mine)
            )
            assert found and found[0].entry.key == "a"
        assert (await store.retrieve("a", **mine)).value == {"content": "ana likes green tea"}
        assert set(await store.retrieve_many(["a", "n1", "n4"], **mine)) == {"a", "n1"}
        assert await store.exists("n2", **mine) and not await store.exists("n4", **mine)
        assert await store.count(**mine) == 5
        assert [owner.memories for owner in await store.owners("user")] == [5]
        assert len(await store.list(**mine)) == 5
        assert len(await store.similar("n1", **mine)) == 4
        stats = await store.stats()
        replica = _replica(stats)
        assert replica["healthy"] and replica["errors"] == 0, replica
        served = replica["operations"]
        # Every read named above was served by the replica; nothing else was sent to it.
        assert {"search", "retrieve", "retrieve_many", "exists", "count", "list"} <= set(served)
        assert "owners" in served
        assert {"similar", "stats"} <= set(served)
        assert set(served) <= READS, served
        assert served["search"] == 3 and replica["reads"] == sum(served.values())
        assert stats["primary_reads"] == 0
        assert stats["memories"] == 5
        # The writes are on the primary, and the replica has replayed them.
        primary = await asyncpg.connect(cluster.primary)
        try:
            table = store.layout.qualified_table
            assert await primary.fetchval(f"SELECT count(*) FROM {table}") == 5
        finally:
            await primary.close()
        assert await cluster.on_replica(f"SELECT count(*) FROM {table}") == 5
    finally:
        await store.close()


async def test_read_your_writes_over_fifty_write_then_search_pairs(cluster: Cluster) -> None:
    # No background checks: one that ran between a write and its read would tell the store
    # the replica's position, and the read would not need to ask (nor count a wait).
    store = await _store(cluster.config(replica_check_interval=3600))
    try:
        for i in range(50):
            text = f"fact {uuid.uuid4().hex} number {i}"
            await store.store(f"k{i}", {"content": text}, scope="user", scope_id="u")
            found = await store.search(
                MemoryQuery(query=text, index_type="contextual", scope="user", scope_id="u")
            )
            assert [result.entry.key for result in found][:1] == [f"k{i}"], i
            assert (await store.retrieve(f"k{i}", scope="user", scope_id="u")).text == text
        stats = await store.stats()
        replica = _replica(stats)
        assert replica["errors"] == 0, replica["last_error"]
        # Each read after a write checked the replica's replay position first.
        assert replica["waits"] >= 50, replica
        assert replica["reads"] + stats["primary_reads"] == 101  # 50 pairs and stats()
        assert replica["reads"] > 0
    finally:
        await store.close()


async def _new_database(cluster: Cluster) -> str:
    """A database created on the primary, once the replica has it too (and nothing in it)."""
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    primary = await asyncpg.connect(cluster.primary)
    try:
        await primary.execute(f'CREATE DATABASE "{name}"')
    finally:
        await primary.close()

    async def replayed() -> bool:
        try:
            conn = await asyncpg.connect(cluster.embedded.uri(name))
        except asyncpg.InvalidCatalogNameError:
            return False
        await conn.close()
        return True

    await _until(replayed)
    return name


async def _start_while_replay_pauses(
    cluster: Cluster, config: PostgresConfig, seconds: float
) -> PostgresStorage[str, Any]:
    """A store started while the replica replays nothing for ``seconds``: the schema the
    store makes on the primary reaches the replica only after that."""
    await cluster.on_replica("SELECT pg_wal_replay_pause()")
    try:
        starting = asyncio.create_task(_store(config))
        await asyncio.sleep(seconds)
    finally:
        await cluster.on_replica("SELECT pg_wal_replay_resume()")
    return await starting


async def test_a_replica_replaying_a_new_database_is_waited_for_not_failed(
    cluster: Cluster,
) -> None:
    """The first store in a new database creates pgvector's types on the primary; the
    replica gets them a moment later. Its first connection found no such type: the replica
    was counted as failed and left out of rotation."""
    name = await _new_database(cluster)
    config = cluster.config(
        dsn=cluster.server.uri(name),
        read_replicas=[cluster.embedded.uri(name)],
        replica_check_interval=3600,  # only the start's own checks
    )
    store = await _start_while_replay_pauses(cluster, config, 1.0)
    try:
        replica = _replica(await store.stats())
        assert replica["errors"] == 0, replica["last_error"]
        assert replica["healthy"]
        await store.store("k", {"content": "first words"}, scope="user", scope_id="u")
        assert (await store.retrieve("k", scope="user", scope_id="u")).text == "first words"
        assert _replica(await store.stats())["reads"] >= 1
    finally:
        await store.close()


async def test_a_replica_without_the_schema_past_the_connect_timeout_is_a_fault(
    cluster: Cluster,
) -> None:
    """Waited for as long as a connection would be, then reported, not left out quietly."""
    name = await _new_database(cluster)
    config = cluster.config(
        dsn=cluster.server.uri(name),
        read_replicas=[cluster.embedded.uri(name)],
        replica_check_interval=3600,
        connect_timeout=0.5,
    )
    store = await _start_while_replay_pauses(cluster, config, 2.0)
    try:
        replica = _replica(await store.stats())
        assert replica["errors"] == 1
        assert "no pgvector types" in replica["last_error"]
        assert not replica["healthy"]
        # Its reads go to the primary meanwhile.
        await store.store("k", {"content": "first words"}, scope="user", scope_id="u")
        assert (await store.retrieve("k", scope="user", scope_id="u")).text == "first words"
    finally:
        await store.close()


async def test_a_paused_replica_lags_and_leaves_the_rotation(cluster: Cluster) -> None:
    config = cluster.config(replica_wait_timeout=0.2, replica_max_lag=1.5)
    writer = await _store(config)
    # A second store on the same table that accepts lag: it shows where reads really go.
    lagging = await _store(config.model_copy(update={"read_your_writes": False}))
    mine: dict[str, Any] = {"scope": "user", "scope_id": "u"}
    try:
        await writer.store("before", {"content": "written before the pause"}, **mine)
        await _until(lambda: _replayed(lagging, "before"))
        await cluster.on_replica("SELECT pg_wal_replay_pause()")
        await writer.store("during", {"content": "written during the pause"}, **mine)
        # The writer reads its own write: the replica has not replayed it, so the primary.
        assert (await writer.retrieve("during", **mine)).text == "written during the pause"
        replica = _replica(await writer.stats())
        assert replica["waits"] >= 1
        # The other store reads the replica, which does not have it yet.
        with pytest.raises(MemoryNotFoundError):
            await lagging.retrieve("during", **mine)
        # Past replica_max_lag the replica leaves the rotation: reads go to the primary.
        await _until(lambda: _out_of_rotation(lagging))
        lagged = _replica(await lagging.stats())
        assert lagged["lag_seconds"] > 1.5 and "behind the primary" in lagged["last_error"]
        assert (await lagging.retrieve("during", **mine)).text == "written during the pause"
    finally:
        await cluster.on_replica("SELECT pg_wal_replay_resume()")
    try:
        await _until(lambda: _in_rotation(lagging))
        assert _replica(await lagging.stats())["lag_seconds"] == 0
        assert (await lagging.retrieve("during", **mine)).text == "written during the pause"
    finally:
        await writer.close()
        await lagging.close()


async def test_bookkeeping_and_primary_reads_do_not_make_reads_wait(cluster: Cluster) -> None:
    # Read counts and term statistics are written on the primary in the background; reads
    # need not see them at once, so they must not hold reads back until a replica replays
    # them (with replay paused, such a read would wait, then go to the primary). Reads that
    # run on the primary (history, scans) write nothing: they must not either.
    store = await _store(cluster.config(replica_wait_timeout=0.2, replica_max_lag=30))
    mine: dict[str, Any] = {"scope": "user", "scope_id": "u"}
    try:
        await store.store("note", {"content": "a memory read often"}, **mine)
        await store.refresh_term_statistics()
        # (Not _replayed: a read that waits too long is answered by the primary.)
        await _until(lambda: _caught_up(store))
        await cluster.on_replica("SELECT pg_wal_replay_pause()")
        for _ in range(3):
            assert (await store.retrieve("note", **mine)).key == "note"
        await store.flush_access_counts()
        await store.refresh_term_statistics()
        assert [v.version for v in await store.history("note", **mine)] == [1]
        assert [entry.key async for entry in store.scan(**mine)] == ["note"]
        before = await store.stats()
        assert await store.count(**mine) == 1
        after = await store.stats()
        assert _replica(after)["waits"] == _replica(before)["waits"]
        assert after["primary_reads"] == before["primary_reads"]
        assert _replica(after)["reads"] > _replica(before)["reads"]
        # A write of the memory itself still does: the next read sees it.
        await store.store("note", {"content": "changed while replay is paused"}, **mine)
        assert (await store.retrieve("note", **mine)).text == "changed while replay is paused"
    finally:
        await cluster.on_replica("SELECT pg_wal_replay_resume()")
        await store.close()


async def test_a_bad_value_is_refused_without_blaming_the_replica(cluster: Cluster) -> None:
    from pepperpy_pg_memory import MemoryValidationError
    from pepperpy_pg_memory.sql import Query

    store = await _store(cluster.config())
    try:
        await store.store("a", {"content": "x"}, scope="user", scope_id="u")
        await _until(lambda: _caught_up(store))
        before = await store.stats()
        # The server refuses the values (SQLSTATE class 22): the primary would refuse them
        # as well, so the error is raised at once, the replica stays in rotation and the
        # primary is not asked.
        with pytest.raises(MemoryValidationError, match="division by zero"):
            await store.reads.fetchval("probe", Query("SELECT 1 / $1::int", [0]))
        after = await store.stats()
        assert _replica(after)["healthy"] and _replica(after)["errors"] == 0
        assert after["primary_reads"] == before["primary_reads"]
        # Keys and prefixes PostgreSQL would refuse never reach a server.
        for bad in ({"key_prefix": "a\x00"}, {"key_prefix": ("a", "b\x00")}):
            with pytest.raises(MemoryValidationError, match="NUL"):
                await store.count(**bad)
        with pytest.raises(MemoryValidationError, match="NUL"):
            await store.search(MemoryQuery(query="x", keys=frozenset({"a\x00"})))
        with pytest.raises(MemoryValidationError, match="NUL"):
            await store.owners(after=("user", "u\x00"))
        assert _replica(await store.stats())["errors"] == 0
    finally:
        await store.close()


async def _caught_up(store: PostgresStorage[str, Any]) -> bool:
    """Whether the replica now serves this store's reads without waiting for a replay."""
    before = _replica(await store.stats())
    await store.count()
    after = _replica(await store.stats())
    return bool(after["waits"] == before["waits"] and after["reads"] > before["reads"])


async def _replayed(store: PostgresStorage[str, Any], key: str) -> bool:
    return await store.exists(key, scope="user", scope_id="u")


async def _out_of_rotation(store: PostgresStorage[str, Any]) -> bool:
    return not _replica(await store.stats())["healthy"]


async def _in_rotation(store: PostgresStorage[str, Any]) -> bool:
    return bool(_replica(await store.stats())["healthy"])


async def test_no_read_fails_while_the_replica_stops_and_restarts(cluster: Cluster) -> None:
    store = await _store(cluster.config())
    mine: dict[str, Any] = {"scope": "user", "scope_id": "u"}
    for i in range(20):
        await store.store(f"k{i}", {"content": f"memory about topic {i}"}, **mine)
    failures: list[BaseException] = []
    reads = 0
    running = True

    async def workload() -> None:
        nonlocal reads
        while running:
            try:
                found = await store.search(MemoryQuery(query="topic 7", limit=3, **mine))
                assert found[0].entry.key == "k7"
                assert await store.count(**mine) == 20
                reads += 2
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)
                return

    workers = [asyncio.create_task(workload()) for _ in range(3)]
    try:
        await _until(lambda: _served_at_least(store, 20))
        await asyncio.to_thread(cluster.stop_replica)
        await _until(lambda: _out_of_rotation(store))
        during = reads

        async def reads_go_on() -> bool:
            return reads > during

        await until(reads_go_on, 30, "reads while the replica is down")
        await asyncio.to_thread(cluster.start_replica)
        await _until(lambda: _in_rotation(store), seconds=30)
        after_restart = _replica(await store.stats())["reads"]
        await _until(lambda: _served_at_least(store, after_restart + 20))
    finally:
        running = False
        await asyncio.gather(*workers)
        stats = await store.stats()
        await store.close()
    assert failures == []
    assert _replica(stats)["errors"] >= 1  # the stop was noticed
    assert stats["primary_reads"] > 0  # and the primary served meanwhile


async def _served_at_least(store: PostgresStorage[str, Any], reads: int) -> bool:
    return int(_replica(await store.stats())["reads"]) >= reads


async def test_an_unreachable_replica_never_fails_a_read(cluster: Cluster) -> None:
    missing = "postgresql://postgres@/postgres?host=/nonexistent-pepperpy&port=5999"
    store = await _store(cluster.config(read_replicas=[missing]))
    try:
        await store.store("a", {"content": "still readable"}, scope="user", scope_id="u")
        assert (await store.retrieve("a", scope="user", scope_id="u")).text == "still readable"
        stats = await store.stats()
        replica = _replica(stats)
        assert not replica["healthy"] and replica["reads"] == 0
        assert replica["errors"] >= 1 and replica["last_error"]
        assert replica["name"] == "replica 1 (/nonexistent-pepperpy:5999/postgres)"
        assert stats["primary_reads"] == 2
    finally:
        await store.close()


async def test_a_server_that_is_not_a_standby_is_not_read_from(cluster: Cluster) -> None:
    store = await _store(cluster.config(read_replicas=[cluster.primary]))
    try:
        await store.store("a", {"content": "x"}, scope="user", scope_id="u")
        assert await store.count() == 1
        replica = _replica(await store.stats())
        assert not replica["healthy"] and replica["reads"] == 0
        assert "not a standby" in replica["last_error"]
    finally:
        await store.close()


async def test_a_failed_read_on_a_replica_is_answered_by_the_primary(cluster: Cluster) -> None:
    # A replica paused before the store's table was created has no such table: the read
    # errors there, and the primary answers it.
    await cluster.on_replica("SELECT pg_wal_replay_pause()")
    try:
        store = await _store(cluster.config(read_your_writes=False, replica_max_lag=60))
        try:
            await store.store("a", {"content": "only on the primary"}, scope="user", scope_id="u")
            assert await store.count() == 1
            stats = await store.stats()
            replica = _replica(stats)
            assert not replica["healthy"] and replica["reads"] == 0
            assert "does not exist" in replica["last_error"]
            assert stats["primary_reads"] == 2
        finally:
            await store.close()
    finally:
        await cluster.on_replica("SELECT pg_wal_replay_resume()")


async def test_the_sync_api_reads_from_the_replica(cluster: Cluster) -> None:
    # The store runs on the process-wide loop thread; its replica checks run there too.
    def work() -> tuple[Any, dict[str, Any]]:
        handle = BackgroundStorage.create(cluster.config(), HashingEmbedder(64))
        try:
            handle.call(lambda store: store.store("a", "from sync code", scope="user"))
            found = handle.call(lambda store: store.retrieve("a", scope="user"))
            return found, handle.call(lambda store: store.stats())
        finally:
            handle.close()

    found, stats = await asyncio.to_thread(work)
    assert found.text == "from sync code"
    assert _replica(stats)["operations"]["retrieve"] == 1 and stats["primary_reads"] == 0


def test_replica_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PEPPERPY_PG_READ_REPLICAS", "postgresql://r1:5432/db, postgresql://u:secret@r2/db"
    )
    config = PostgresConfig()
    assert [dsn.get_secret_value() for dsn in config.read_replicas] == [
        "postgresql://r1:5432/db",
        "postgresql://u:secret@r2/db",
    ]
    assert "secret" not in repr(config)
    assert describe_dsn("postgresql://u:secret@r2/db") == "r2:5432/db"
    with pytest.raises(MemoryConfigurationError, match="read_replicas"):
        PostgresConfig(read_replicas=["r1:5432"])
    with pytest.raises(MemoryConfigurationError, match="embedded_replicas"):
        PostgresConfig(host="db.example", embedded_replicas=1)


def test_record_end_takes_off_a_page_header() -> None:
    page, segment = 8192, 16 * 1024 * 1024
    assert record_end(5 * page + 100, page, segment) == 5 * page + 100
    assert record_end(5 * page + 24, page, segment) == 5 * page
    assert record_end(3 * segment + 40, page, segment) == 3 * segment
    assert record_end(5 * page + 40, page, segment) == 5 * page + 40  # not a header
