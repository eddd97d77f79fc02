"""The store on a Citus cluster (a coordinator and two workers): distributed at start(),
converted by ``distribute``, every operation giving what it gives on one server, owner-scoped
statements on one node.

The cluster comes from ``citus_dsn`` (conftest): ``./scripts/test`` builds Citus from
../shared/citus, or ``PEPPERPY_PG_TEST_CITUS_DSN`` names a coordinator of your own.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from conftest import CitusCluster
from pgvector.asyncpg import register_vector

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryConfigurationError,
    MemoryConnectionError,
    MemoryError,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    PostgresConfig,
    PostgresStorage,
    schema,
)
from pepperpy_pg_memory.queries import Restriction
from pepperpy_pg_memory.schema import migrations
from pepperpy_pg_memory.search_sql import Page
from pepperpy_pg_memory.types import Identity

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}
BRUNO = {"scope": MemoryScope.USER, "scope_id": "bruno"}

Make = Callable[..., PostgresConfig]


@pytest.fixture(scope="module")
async def cluster_schema(citus_dsn: str) -> AsyncIterator[str]:
    schema = f"citus_{uuid.uuid4().hex[:8]}"
    yield schema
    conn = await asyncpg.connect(citus_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def on_cluster(citus_dsn: str, cluster_schema: str) -> Make:
    """Configs for a table of this test's own on the cluster (distributed by owner unless
    the test says otherwise)."""

    def make(**overrides: Any) -> PostgresConfig:
        values: dict[str, Any] = {
            "dsn": citus_dsn,
            "schema": cluster_schema,
            "table": f"m_{uuid.uuid4().hex[:10]}",
            "distribution": "owner",
            "retry_attempts": 2,
            "retry_base_delay": 0.05,
        }
        values.update(overrides)
        return PostgresConfig(**values)

    return make


def _store(config: PostgresConfig) -> PostgresStorage[str, Any]:
    return PostgresStorage[str, Any](config, HashingEmbedder(64))


async def _placements(dsn: str, config: PostgresConfig) -> dict[str, tuple[str, str | None, int]]:
    """Each of the store's tables Citus manages: (method, column, co-location group)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, p.partmethod::text AS method, p.colocationid, "
            "column_to_column_name(p.logicalrelid, p.partkey) AS column_name "
            "FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
            "AND c.relname LIKE $2",
            config.schema_name,
            f"{config.table}%",
        )
    finally:
        await conn.close()
    return {
        row["relname"]: (row["method"], row["column_name"], row["colocationid"]) for row in rows
    }


@pytest.mark.citus
async def test_start_creates_the_tables_distributed_and_co_located(
    citus_dsn: str, on_cluster: Make
) -> None:
    config = on_cluster()
    async with _store(config):
        pass
    placed = await _placements(citus_dsn, config)
    table = config.table
    per_memory = [table, f"{table}_passages", f"{table}_history", f"{table}_access"]
    per_owner = [f"{table}_owner_terms", f"{table}_owner_totals"]
    groups = {placed[name][2] for name in per_memory + per_owner}
    assert len(groups) == 1  # one co-location group: an owner's rows share a node
    assert all(placed[name][:2] == ("h", "scope_id") for name in per_memory + per_owner)
    # Read by every node, written by no memory write.
    for name in (f"{table}_term_stats", f"{table}_backfills", f"{table}_tenant_roles"):
        assert placed[name][0] == "n"


@pytest.mark.citus
async def test_processes_starting_at_once_distribute_a_new_store_once(on_cluster: Make) -> None:
    config = on_cluster()
    stores = [_store(config) for _ in range(3)]
    await asyncio.gather(*(store.start() for store in stores))
    try:
        await stores[0].store("k", "written by the first", **ANA)
        assert (await stores[2].retrieve("k", **ANA)).value == "written by the first"
    finally:
        await asyncio.gather(*(store.close() for store in stores))


@pytest.mark.citus
async def test_by_tenant_every_table_follows_the_tenant(citus_dsn: str, on_cluster: Make) -> None:
    config = on_cluster(distribution="tenant", tenant="acme")
    async with _store(config) as store:
        await store.store("k", "a memory of acme's", **ANA)
        assert (await store.retrieve("k", **ANA)).value == "a memory of acme's"
    placed = await _placements(citus_dsn, config)
    for suffix in ("", "_history", "_term_stats", "_backfills"):
        assert placed[config.table + suffix][:2] == ("h", "tenant")


async def test_a_server_without_citus_is_refused(make_config: Make) -> None:
    with pytest.raises(MemoryConfigurationError, match="Citus coordinator"):
        async with _store(make_config(distribution="owner")):
            pass


def _as_role(dsn: str, role: str) -> str:
    """``dsn`` with ``role`` (and the tests' password) as its user."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{ROLE_PASSWORD}@{host}"))


ROLE_PASSWORD = "rls-test"


@pytest.fixture
async def cluster_roles(citus_dsn: str) -> AsyncIterator[dict[str, str]]:
    """Three ordinary login roles of the cluster — the tables' owner and two tenants'
    processes — by name; dropped after, with what they own."""
    suffix = uuid.uuid4().hex[:6]
    names = {kind: f"rls_{kind}_{suffix}" for kind in ("owner", "acme", "globex")}
    conn = await asyncpg.connect(citus_dsn)
    try:
        for name in names.values():
            await conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{ROLE_PASSWORD}'")
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO {names["owner"]}')
        yield names
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {names['owner']} CASCADE")
        for name in names.values():
            await conn.execute(f"DROP OWNED BY {name} CASCADE")
            await conn.execute(f"DROP ROLE {name}")
        await conn.close()


@pytest.mark.citus
@pytest.mark.parametrize("distribution", ["owner", "tenant"])
async def test_row_level_security_holds_on_the_cluster(
    citus_dsn: str, cluster_roles: dict[str, str], distribution: str
) -> None:
    """Tenants of one distributed store, each process under a role bound to its tenant: the
    policies run on the workers, and another tenant's role sees and changes nothing, through
    the store or in SQL of its own that names the other tenant."""
    owner, acme_role, globex_role = (cluster_roles[k] for k in ("owner", "acme", "globex"))

    def config(role: str | None, **values: Any) -> PostgresConfig:
        return PostgresConfig(
            dsn=citus_dsn if role is None else _as_role(citus_dsn, role),
            schema=owner,
            table="memories",
            distribution=distribution,
            row_level_security=True,
            **values,
        )

    with pytest.raises(MemoryConfigurationError, match="superuser"):
        async with _store(config(None)):
            pass
    async with _store(config(owner)) as admin:
        await admin.grant_tenant(acme_role, "acme")
        await admin.grant_tenant(globex_role, "globex")
    async with (
        _store(config(acme_role, tenant="acme")) as acme,
        _store(config(globex_role, tenant="globex")) as globex,
    ):
        await acme.store("plan", "acme launches the rocket in May", **ANA)
        await globex.store("plan", "globex launches the boat in June", **ANA)
        await globex.store("plan", "globex launches the boat in July", **ANA)  # its own
        for store, text in ((acme, "May"), (globex, "July")):
            assert text in (await store.retrieve("plan", **ANA)).value
            assert await store.count() == 1
            for index in (MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID):
                hits = await store.search(MemoryQuery(query="launches", index_type=index, **ANA))
                assert [text in hit.entry.value for hit in hits] == [True]
            assert [v.version for v in await store.history("plan", **ANA)] == (
                [1] if store is acme else [2, 1]  # newest first
            )
        assert await globex.delete("plan", **ANA)
        assert "May" in (await acme.retrieve("plan", **ANA)).value
        # Bulk writes and deletes (staged on the coordinator, then sent to the workers).
        batch = [{"key": f"bulk-{i}", "value": f"bulk note {i}"} for i in range(6)]
        assert await globex.store_many(batch, **BRUNO) == 6
        assert await globex.delete_many(keys=["bulk-0", "bulk-1"], **BRUNO) == 2
        assert await globex.count() == 4 and await acme.count() == 1
        # The tenant's own statistics and sweeps, written under the policies.
        await acme.store("brief", "a short note", ttl=timedelta(milliseconds=1), **BRUNO)
        await acme.refresh_term_statistics()
        words = await acme.search(MemoryQuery(query="rocket", index_type=MemoryIndex.CONTEXTUAL))
        assert [hit.entry.key for hit in words] == ["plan"]
        await asyncio.sleep(0.05)
        assert await acme.cleanup_expired() == 1
        figures = await acme.stats()
        assert figures["memories"] == 1
        # Sizes are the shards' on the workers (the coordinator's tables are empty shells).
        assert 0 < figures["table_bytes"] < figures["total_bytes"]
        assert all(size > 0 for size in figures["index_bytes"].values())
    with pytest.raises(MemoryConfigurationError, match="bound to tenant 'globex'"):
        async with _store(config(globex_role, tenant="acme")):
            pass

    # SQL of their own: on a cluster a setting reaches the workers as SET LOCAL, forwarded.
    naming_acme = (
        "SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL pepperpy.tenant = 'acme'"
    )
    attacker = await asyncpg.connect(_as_role(citus_dsn, globex_role))
    try:
        async with attacker.transaction():
            await attacker.execute(naming_acme)
            for name in ("memories", "memories_history", "memories_owner_terms"):
                seen = await attacker.fetch(f'SELECT DISTINCT tenant FROM {owner}."{name}"')
                assert {row["tenant"] for row in seen} <= {"globex"}  # its own history only
            update = f"UPDATE {owner}.memories SET content = 'x' WHERE scope_id = 'ana'"
            assert await attacker.execute(update) == "UPDATE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with attacker.transaction():
                await attacker.execute(naming_acme)
                await attacker.execute(
                    f"INSERT INTO {owner}.memories (tenant, key, value, content, content_hash, "
                    "memory_type, scope, scope_id, indices) VALUES ('acme', 'planted', '1', "
                    "'x', '\\x00', 'long_term', 'user', 'ana', '{}')"
                )
    finally:
        await attacker.close()
    # The tables' owner (bound to no tenant) acts for the tenant its session names.
    admin_conn = await asyncpg.connect(_as_role(citus_dsn, owner))
    try:
        async with admin_conn.transaction():
            await admin_conn.execute(naming_acme)
            rows = await admin_conn.fetch(f"SELECT tenant, content FROM {owner}.memories")
        assert [(row["tenant"], "May" in row["content"]) for row in rows] == [("acme", True)]
    finally:
        await admin_conn.close()


@pytest.mark.citus
async def test_a_store_under_row_level_security_is_converted_by_distribute(
    citus_dsn: str, cluster_roles: dict[str, str]
) -> None:
    owner, acme_role, globex_role = (cluster_roles[k] for k in ("owner", "acme", "globex"))

    def config(role: str, **values: Any) -> PostgresConfig:
        dsn = _as_role(citus_dsn, role)
        return PostgresConfig(
            dsn=dsn, schema=owner, table="kept", row_level_security=True, **values
        )

    async with _store(config(owner)) as admin:
        await admin.grant_tenant(acme_role, "acme")
    async with _store(config(acme_role, tenant="acme")) as acme:
        await acme.store("before", "written on one server", **ANA)
    async with _store(config(owner)) as admin:
        await admin.distribute("owner")
        await admin.grant_tenant(globex_role, "globex")  # a binding made on the cluster
    async with (
        _store(config(acme_role, tenant="acme", distribution="owner")) as acme,
        _store(config(globex_role, tenant="globex", distribution="owner")) as globex,
    ):
        assert (await acme.retrieve("before", **ANA)).value == "written on one server"
        await globex.store("before", "globex's own", **ANA)
        assert (await acme.retrieve("before", **ANA)).value == "written on one server"
        assert [v.version for v in await acme.history("before", **ANA)] == [1]
        assert await globex.count() == 1 and await acme.count() == 1


@pytest.mark.citus
async def test_an_existing_store_is_converted_by_distribute_with_nothing_lost(
    citus_dsn: str, on_cluster: Make
) -> None:
    plain = on_cluster(distribution=None)
    async with _store(plain) as store:
        await store.store("k", "Ana likes green tea", **ANA)
        await store.store("k", "Ana likes black tea", **ANA)
        await store.store("g", "the office opens at 9")
    wanted = plain.model_copy(update={"distribution": "owner"})
    with pytest.raises(MemoryConfigurationError, match="pepperpy-memory distribute"):
        async with _store(wanted):
            pass
    # As a store made before Citus was installed has them (schema 26): trigger functions
    # that plan once per session, which a distributed query cannot.
    functions = [
        f"{plain.schema_name}.{plain.table}_number_version",
        f"{plain.schema_name}.pepperpy_enforce_quota",
    ]
    planning = "SELECT proconfig FROM pg_proc WHERE oid = $1::regproc"
    seen: list[tuple[int, int]] = []
    conn = await asyncpg.connect(citus_dsn)
    try:
        for function in functions:
            await conn.execute(
                f"ALTER FUNCTION {function}() SET plan_cache_mode = force_generic_plan"
            )
        # And pages filled to the brim (schema 28 on one server).
        table = f'"{plain.schema_name}"."{plain.table}"'
        await conn.execute(f"ALTER TABLE {table} RESET (fillfactor)")
        async with _store(plain) as store:
            await store.distribute("owner", progress=lambda done, total: seen.append((done, total)))
            # The store goes on working, distributed.
            await store.store("k2", "Ana likes rooibos", **ANA)
        for function in functions:
            assert await conn.fetchval(planning, function) is None, function
        # On the cluster a TTL refresh rewrites the row: its page keeps room for it.
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = $1::regclass", table
        )
        assert "fillfactor=70" in options
    finally:
        await conn.close()
    assert seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1]
    # The quota trigger's count runs on the cluster (a generic plan of it could not).
    async with _store(wanted.model_copy(update={"max_memories_per_owner": 10})) as store:
        await store.store("k3", "Ana likes chai", **ANA)
    async with _store(wanted) as store:
        assert (await store.retrieve("k", **ANA)).value == "Ana likes black tea"
        # The triggers were off for the copy only: the next write is numbered after it.
        await store.store("k", "Ana likes mint tea", **ANA)
        assert [v.version for v in await store.history("k", **ANA)] == [3, 2, 1]
        assert await store.count() == 4
        # Running it again finds everything in place.
        await store.distribute("owner")
    assert (await _placements(citus_dsn, plain))[plain.table][:2] == ("h", "scope_id")


async def _workload(store: PostgresStorage[str, Any]) -> dict[str, Any]:
    """Every kind of operation, with owners and without; what each returned."""
    seen: dict[str, Any] = {}
    await store.store("tea", "Ana likes green tea", **ANA, actor="ana", reason="said so")
    await store.store("tea", "Ana likes black tea", **ANA)
    await store.store("jazz", "Bruno listens to jazz on Fridays", **BRUNO)
    await store.store("office", "The office opens at 9")
    few = [(f"cat-{i}", f"fact number {i} about cats and dogs") for i in range(6)]
    seen["store_many small"] = int(await store.store_many(few, **ANA))
    many = [(f"note-{i}", f"Bruno note {i} about trains and buses {i * 7}") for i in range(40)]
    seen["store_many staged"] = int(await store.store_many(many, **BRUNO))
    seen["dedupe"] = (await store.store("tea-again", "Ana likes black tea", **ANA, dedupe=True)).key
    await store.store("brief", "a short-lived note", **ANA, ttl=timedelta(milliseconds=300))
    seen["retrieve"] = (await store.retrieve("tea", **ANA)).value
    seen["retrieve without owner"] = (await store.retrieve("jazz")).value
    seen["exists"] = await store.exists("jazz", **BRUNO)
    seen["count"] = await store.count()
    seen["count ana"] = await store.count(**ANA)
    seen["list ana"] = [entry.key for entry in await store.list(**ANA)]
    # BM25 weighs terms by statistics a background task recounts after writes: whether it
    # has when the searches run depends on the machine's speed, so count them now.
    await store.refresh_term_statistics()
    for index in (MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID):
        for owner_name, owner in (("ana", ANA), ("everyone", {})):
            found = await store.search(
                MemoryQuery(query="cats and tea", index_type=index, limit=4, **owner)
            )
            seen[f"{index.value} {owner_name}"] = sorted(hit.entry.key for hit in found)
    temporal = await store.search(
        MemoryQuery(query="trains", index_type=MemoryIndex.TEMPORAL, limit=3, **BRUNO)
    )
    seen["temporal"] = len(temporal)
    seen["similar"] = sorted(hit.entry.key for hit in await store.similar("cat-1", **ANA, limit=3))
    await store.supersede("tea", "Ana likes oolong tea", **ANA, reason="changed her mind")
    await store.invalidate("office", reason="moved")
    seen["deleted"] = await store.delete("jazz", **BRUNO, actor="bruno", reason="asked")
    seen["history tea"] = [
        (v.version, v.operation, v.actor, v.reason) for v in await store.history("tea", **ANA)
    ]
    seen["history jazz"] = [
        (v.version, v.operation, v.actor, v.reason) for v in await store.history("jazz", **BRUNO)
    ]
    restored = await store.restore("jazz", version=1, **BRUNO)
    seen["restored"] = restored.value
    await asyncio.sleep(0.6)  # "brief" expires
    seen["cleanup"] = await store.cleanup_expired()
    seen["history brief"] = [v.operation for v in await store.history("brief", **ANA)]
    await store.retrieve("cat-1", **ANA)
    await store.flush_access_counts()
    seen["read count"] = (await store.retrieve("cat-2", **ANA)).access_count
    seen["consolidate"] = len((await store.consolidate(dry_run=True)).merged)
    exported = io.StringIO()
    seen["export"] = await store.export_jsonl(exported, with_history=True)
    seen["delete_many"] = await store.delete_many(**BRUNO, key_prefix="note-1")
    seen["stats"] = (await store.stats())["memories"]
    seen["reindex"] = await store.reindex()
    return seen


@pytest.mark.citus
async def test_every_operation_gives_on_the_cluster_what_it_gives_on_one_server(
    make_config: Make, on_cluster: Make
) -> None:
    async with _store(make_config()) as store:
        expected = await _workload(store)
    async with _store(on_cluster(max_memories_per_owner=None)) as store:
        found = await _workload(store)
    assert found == expected
    # What the workload saw, so that agreement is not agreement on nothing.
    assert expected["history jazz"][0][1:] == ("delete", "bruno", "asked")
    assert expected["history tea"][-1][1:] == ("create", "ana", "said so")
    assert expected["history brief"][0] == "expire"
    assert expected["cleanup"] == 1
    assert expected["dedupe"] == "tea"


@pytest.mark.citus
async def test_the_quota_holds_on_the_cluster(on_cluster: Make) -> None:
    short = {"type": MemoryType.SHORT_TERM}
    async with _store(on_cluster(max_memories_per_owner=2)) as store:
        await store.store("a", "first note", **ANA, **short, importance=0.1)
        await store.store("b", "second note", **ANA, **short, importance=0.9)
        await store.store("c", "third note", **ANA, **short)
        await store.store("x", "Bruno's own", **BRUNO, **short)
        assert sorted(entry.key for entry in await store.list(**ANA)) == ["b", "c"]
        assert (await store.history("a", **ANA))[0].operation == "evict"
        assert await store.count(**BRUNO) == 1


@pytest.mark.citus
async def test_owner_scoped_statements_run_on_one_node(citus_dsn: str, on_cluster: Make) -> None:
    async with _store(on_cluster()) as store:
        await store.store("tea", "Ana likes green tea", **ANA)
        started = store._ready
        owner = started.restriction(MemoryScope.USER, "ana")
        vector = await store.query_vector("tea")
        page = Page(5, 0, None)
        statements = {
            "retrieve": started.statements.retrieve("tea", owner, False),
            "delete": started.statements.delete("tea", owner),
            "store": started.statements.upsert_one(
                "",
                # A write's record (queries.WRITE_COLUMNS), JSON as text for a plain
                # connection.
                ["tea", '"x"', "x", b"h", "long_term", "user", "ana", ["semantic"], "{}"]
                + [None] * 7
                + [0.5],
            ),
            "semantic": started.searches.semantic_search(vector, owner, page),
            "contextual": started.searches.contextual_search("green tea", owner, page),
            "hybrid": started.searches.hybrid_search(
                "green tae", vector, owner, page, candidates=50, rrf_k=60
            ),
            "temporal": started.searches.temporal_search("tea", owner, page),
            "exists": started.statements.exists("tea", owner),
            "count": started.statements.count(owner),
            "list": started.statements.list_page(
                owner, limit=10, offset=0, order_by="updated_at", descending=True
            ),
            "touch": started.statements.touch(
                "", [Identity("user", "ana", "tea")], timedelta(minutes=5)
            ),
            "history": started.history.versions("", Identity("user", "ana", "tea"), 10),
            "similar": started.searches.similar(
                Identity("user", "ana", "tea"), owner, limit=3, min_score=None, vector=vector
            ),
        }
        everyone = Restriction(tenant="")
        fan_out = started.searches.semantic_search(vector, everyone, page)
        settings = store.database.transaction_settings
        assert settings is not None
    # As the store's sessions plan: for the values given (see lifecycle.session_settings).
    conn = await asyncpg.connect(
        citus_dsn,
        server_settings={
            "plan_cache_mode": "force_custom_plan",
        },
    )
    try:
        await register_vector(conn)
        for name, query in statements.items():
            plan = await _plan(conn, settings, query.sql, query.args)
            # Every part on one node; reads in one task, with no part run first on its own
            # (delete's moment, a constant, is computed first on the coordinator).
            assert set(re.findall(r"Task Count: (\d+)", plan)) == {"1"}, (name, plan)
            if name != "delete":
                assert "Distributed Subplan" not in plan, (name, plan)
        # Without an owner, every shard.
        plan = await _plan(conn, settings, fan_out.sql, fan_out.args)
        assert max(int(n) for n in re.findall(r"Task Count: (\d+)", plan)) > 1
    finally:
        await conn.close()


async def _plan(conn: asyncpg.Connection, settings: str, sql: str, args: Any) -> str:
    """The plan of ``sql`` in a transaction set up as the store sets up its own."""
    async with conn.transaction():
        await conn.execute(settings)
        return "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {sql}", *args))


async def _node_of(dsn: str, config: PostgresConfig, scope_id: str) -> int:
    """The port of the worker holding ``scope_id``'s memories."""
    conn = await asyncpg.connect(dsn)
    try:
        port: int = await conn.fetchval(
            "SELECT p.nodeport FROM pg_dist_shard_placement p WHERE p.shardid = "
            "get_shard_id_for_distribution_column($1::regclass, $2::text)",
            f"{config.schema_name}.{config.table}",
            scope_id,
        )
    finally:
        await conn.close()
    return port


@pytest.mark.citus
async def test_a_stopped_worker_stops_only_its_owners_and_fan_outs(
    citus_cluster: CitusCluster, on_cluster: Make
) -> None:
    if not citus_cluster.local:
        pytest.skip("stops a worker: needs the cluster this session started")
    config = on_cluster(retry_attempts=1)
    async with _store(config) as store:
        owners = {f"u{i}": await _node_of(citus_cluster.dsn, config, f"u{i}") for i in range(12)}
        down_port = max(owners.values())
        down = next(owner for owner, port in owners.items() if port == down_port)
        up = next(owner for owner, port in owners.items() if port != down_port)
        for owner in (down, up):
            await store.store("note", f"{owner}'s first note", scope="user", scope_id=owner)
        citus_cluster.stop_node(down_port)
        try:
            # The owner whose node is up is served: writes (history included) and reads.
            await store.store("note", f"{up}'s second note", scope="user", scope_id=up)
            assert [v.version for v in await store.history("note", scope="user", scope_id=up)] == [
                2,
                1,
            ]
            found = await store.search(
                MemoryQuery(query="second note", limit=3, scope=MemoryScope.USER, scope_id=up)
            )
            assert [hit.entry.key for hit in found] == ["note"]
            # The other owner's calls, and calls across owners, say which node is missing.
            with pytest.raises(MemoryConnectionError, match=str(down_port)):
                await store.retrieve("note", scope="user", scope_id=down)
            with pytest.raises(MemoryConnectionError, match=str(down_port)):
                await store.search(MemoryQuery(query="note", limit=3))
        finally:
            citus_cluster.start_node(down_port)
        # Everything recovers once the node is back.
        await store.store("note", f"{down}'s second note", scope="user", scope_id=down)
        assert len(await store.search(MemoryQuery(query="note", limit=30))) == 2


@pytest.mark.citus
async def test_shard_moves_while_writes_continue_lose_nothing(
    citus_cluster: CitusCluster, on_cluster: Make
) -> None:
    if not citus_cluster.local:
        pytest.skip("moves shards between workers: needs the cluster this session started")
    config = on_cluster()
    owners = [f"mover{i}" for i in range(6)]
    acknowledged: dict[tuple[str, str], int] = {}
    moving = True

    async def writer(store: PostgresStorage[str, Any], number: int) -> None:
        round_ = 0
        while moving or round_ < 3:
            for owner in owners:
                key = f"k{number}"
                await store.store(
                    key, f"{owner} {key} write {round_}", scope="user", scope_id=owner
                )
                acknowledged[(owner, key)] = acknowledged.get((owner, key), 0) + 1
            round_ += 1

    async with _store(config) as store:
        for owner in owners:  # every shard the writers use exists with rows
            await store.store("k0", f"{owner} first", scope="user", scope_id=owner)
        acknowledged.update({(owner, "k0"): 1 for owner in owners})
        writers = [asyncio.create_task(writer(store, number)) for number in range(3)]
        conn = await asyncpg.connect(citus_cluster.dsn)
        try:
            shards = await conn.fetch(
                "SELECT DISTINCT p.shardid, p.nodename, p.nodeport FROM pg_dist_shard_placement p "
                "WHERE p.shardid IN (SELECT get_shard_id_for_distribution_column($1::regclass, o) "
                "FROM unnest($2::text[]) o)",
                f"{config.schema_name}.{config.table}",
                owners,
            )
            workers = await conn.fetch(
                "SELECT nodename, nodeport FROM pg_dist_node WHERE noderole = 'primary' "
                "AND shouldhaveshards ORDER BY nodeport"
            )
            for shard in shards:
                target = next(w for w in workers if w["nodeport"] != shard["nodeport"])
                # Moves the shard with every table co-located with it (history, passages,
                # read counts, term statistics); writes wait while it copies.
                await conn.execute(
                    "SELECT citus_move_shard_placement($1, $2, $3, $4, $5, "
                    "shard_transfer_mode => 'block_writes')",
                    shard["shardid"],
                    shard["nodename"],
                    shard["nodeport"],
                    target["nodename"],
                    target["nodeport"],
                )
            now_at = dict(
                await conn.fetch(
                    "SELECT shardid, nodeport FROM pg_dist_shard_placement "
                    "WHERE shardid = ANY($1::bigint[])",
                    [shard["shardid"] for shard in shards],
                )
            )
        finally:
            moving = False
            await asyncio.gather(*writers)
            await conn.close()
        assert all(now_at[shard["shardid"]] != shard["nodeport"] for shard in shards)
        # Every acknowledged write is there, as a version of its memory: gapless, in order,
        # numbered by the triggers on whichever node held the shard.
        for (owner, key), writes in acknowledged.items():
            versions = [v.version for v in await store.history(key, scope="user", scope_id=owner)]
            assert versions == list(range(writes, 0, -1)), (owner, key)


@pytest.mark.citus
async def test_a_distributed_store_upgrades_on_the_cluster(
    citus_dsn: str, on_cluster: Make
) -> None:
    config = on_cluster()
    async with _store(config) as store:
        await store.store("tea", "Ana likes green tea", **ANA)
        layout = store.layout
    # The store as schema 18 left it: the history function Citus deparsed wrongly on the
    # workers (see schema.migrations._v19_history_on_workers), and the registry at 18.
    old = [
        statement.replace("CASE WHEN TG_OP = 'INSERT'", "CASE TG_OP WHEN 'INSERT'")
        for statement in migrations._history_functions(layout, migrations._V9_VERSIONED_COLUMNS)
    ]
    conn = await asyncpg.connect(citus_dsn)
    try:
        for statement in old:
            await conn.execute(statement)  # Citus carries the function to the workers
        async with _store(config) as store:  # the registry still says 19: nothing to apply
            with pytest.raises(MemoryError, match="operator does not exist"):
                await store.store("tea", "Ana likes oolong tea", **ANA)
        await conn.execute(
            f"UPDATE {layout.registry} SET schema_version = 18 WHERE table_name = $1",
            layout.table,
        )
    finally:
        await conn.close()
    async with _store(config.model_copy(update={"history": True})) as store:
        # start() applied migration 19 on the cluster: the workers write versions again.
        assert store.layout.version == schema.SCHEMA_VERSION
        await store.store("tea", "Ana likes black tea", **ANA)
        assert [v.version for v in await store.history("tea", **ANA)] == [2, 1]


@pytest.mark.citus
async def test_a_process_of_an_older_release_may_not_write_to_the_cluster(
    on_cluster: Make,
) -> None:
    async with _store(on_cluster()) as store:
        await store.store("tea", "Ana likes green tea", **ANA)
        settings = store.database.transaction_settings
        assert settings is not None
        # What a process speaking schema 18 would send with each transaction.
        store.database.transaction_settings = settings.replace(
            f"pepperpy.client_schema = '{schema.SCHEMA_VERSION}'", "pepperpy.client_schema = '18'"
        )
        with pytest.raises(MemoryError, match="runs an older release") as caught:
            await store.store("tea", "Ana likes black tea", **ANA)
        assert "schema 18" in str(caught.value)
        with pytest.raises(MemoryError, match="runs an older release"):
            await store.delete("tea", **ANA)
        store.database.transaction_settings = settings
        assert (await store.retrieve("tea", **ANA)).value == "Ana likes green tea"


ON_THE_CLUSTER = [
    "tests/test_langgraph_contract.py",  # LangGraph's own store tests
    "tests/test_langgraph_store.py",
    "tests/test_langchain_adapters.py",
    "tests/test_llama_index.py",
    "tests/test_mcp.py",
    "tests/test_store_retrieve.py",
    "tests/test_search.py",
    "tests/test_history.py",
    "tests/test_store_many.py",
    "tests/test_quota.py",
    "tests/test_dedupe.py",
    "tests/test_consolidation.py",
    "tests/test_backup.py",
    "tests/test_expiry_and_scopes.py",
    "tests/test_passages.py",
    "tests/test_owner_identity.py",
    "tests/test_conversations.py",
    "tests/test_schema_and_maintenance.py",
    "tests/test_security.py",
    "tests/test_concurrent_writers.py",
    "tests/test_filters.py",
    "tests/test_indexed_metadata.py",
    "tests/test_owner_index.py",
    "tests/test_ranking.py",
    "tests/test_contextual_recall.py",
    "tests/test_embedder_identity.py",
    "tests/test_lookups_and_runner.py",
    "tests/test_monitoring.py",
    "tests/test_langgraph_parity.py",
    "tests/test_bursts.py",
]
"""The behaviours run again with every store distributed by owner on the cluster."""

NOT_ON_THE_CLUSTER = [
    # Lock a row with SQL of the test's own that names no owner (Citus refuses it).
    "tests/test_history.py::test_a_cancelled_write_leaves_no_version",
    # The `ordinary` fixture's role is granted its schema on the coordinator only (the
    # cluster's own row-level security tests are in this file).
    "tests/test_history.py::test_history_has_row_level_security",
    # Waits for a lock, which on a cluster is taken on a worker (the coordinator's
    # pg_stat_activity does not show the wait).
    "tests/test_history.py::test_the_backfill_leaves_a_version_replaced_while_it_waited_its_vector",
    # Reads the plan of a statement across owners, which on a cluster is each shard's.
    "tests/test_store_many.py::test_bulk_load_rebuilds_the_vector_index_atomically",
    # Ages rows with SQL of the test's own that Citus refuses (a moment computed from a
    # column in an UPDATE).
    "tests/test_expiry_and_scopes.py::test_short_ttl_really_expires",
    # On a cluster a TTL refresh rewrites the memory's row (schema 23 keeps the refreshes
    # beside the rows on one server only).
    "tests/test_schema_and_maintenance.py::test_a_ttl_refresh_leaves_the_memory_row_alone",
    "tests/test_schema_and_maintenance.py::test_a_ttl_refresh_calls_no_version_trigger",
    # Upgrades a store under row-level security from schema 22, which no cluster store can
    # be: row-level security on a cluster came after schema 23.
    "tests/test_schema_and_maintenance.py::"
    "test_the_upgrade_to_refreshes_gives_them_the_memories_protections",
    "tests/test_concurrent_writers.py::test_a_ttl_refresh_never_waits_for_a_writer",
    # Upgrades a store from schema 1; a store is distributed from CITUS_READY_VERSION on.
    "tests/test_security.py::test_a_table_of_an_older_schema_version_is_upgraded",
    # Read a single server's plans (on a cluster EXPLAIN shows the coordinator's, and its
    # tests of what runs where are in this file).
    "tests/test_indexed_metadata.py::test_a_selective_range_is_served_by_the_index",
    "tests/test_contextual_recall.py::"
    "test_a_question_of_common_words_fetches_a_bounded_candidate_set",
    "tests/test_contextual_recall.py::test_a_small_owner_is_searched_without_other_owners_terms",
    "tests/test_contextual_recall.py::test_a_large_owners_search_looks_up_only_the_questions_terms",
    "tests/test_contextual_recall.py::"
    "test_an_owner_holding_most_memories_is_checked_on_what_the_index_finds",
    "tests/test_contextual_recall.py::"
    "test_a_large_owners_misspelling_is_checked_on_what_the_trigram_index_finds",
    "tests/test_contextual_recall.py::"
    "test_only_words_the_statistics_do_not_count_are_looked_up_as_misspellings",
    # A single server's plan modes: a cluster plans every statement for its values.
    "tests/test_search.py::test_word_searches_plan_once_and_every_other_statement_for_its_values",
    # A write's returned entry carries no read counts on a cluster (docs/scaling.md).
    "tests/test_ranking.py::test_a_deleted_memory_takes_its_counts_along",
]


@pytest.mark.citus
def test_the_adapters_and_the_core_behave_the_same_on_the_cluster(citus_dsn: str) -> None:
    """LangGraph's, LangChain's, LlamaIndex's and the MCP server's tests and the core's,
    each store distributed by owner (conftest's make_config reads the variables)."""
    root = Path(__file__).resolve().parents[1]
    environment = {
        **os.environ,
        "PEPPERPY_PG_TEST_DSN": citus_dsn,
        "PEPPERPY_PG_TEST_DISTRIBUTION": "owner",
    }
    deselected = [argument for test in NOT_ON_THE_CLUSTER for argument in ("--deselect", test)]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not model and not faults and not stress and not citus",
            *deselected,
            *ON_THE_CLUSTER,
        ],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


@pytest.mark.citus
async def test_a_search_across_owners_finds_the_exact_nearest(
    citus_dsn: str, on_cluster: Make
) -> None:
    """Each shard's HNSW graph, merged on the coordinator, against the exact top 10 by
    cosine over every memory; with the index scans off the statement is exact."""
    import numpy as np

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(1_500, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(20, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = [list(np.argsort(-(vectors @ query))[:10]) for query in queries]
    async with _store(on_cluster()) as store:
        await store.store_many(
            {
                "key": f"k{i}",
                "value": f"memory {i}",
                "embedding": vectors[i].tolist(),
                "scope": MemoryScope.USER,
                "scope_id": f"owner-{i % 40}",
            }
            for i in range(len(vectors))
        )
        found = [
            [
                int(hit.entry.key[1:])
                for hit in await store.search(MemoryQuery(embedding=q.tolist(), limit=10))
            ]
            for q in queries
        ]
        started = store._ready
        statements = [
            started.searches.semantic_search(q, Restriction(tenant=""), Page(10, 0, None))
            for q in queries
        ]
        settings = store.database.transaction_settings
        assert settings is not None
    hits = sum(len(set(got) & set(want)) for got, want in zip(found, exact, strict=True))
    assert hits / (10 * len(queries)) >= 0.98
    conn = await asyncpg.connect(citus_dsn)
    try:
        await register_vector(conn)
        for statement, want in zip(statements, exact, strict=True):
            async with conn.transaction():
                await conn.execute(settings + "; SET LOCAL enable_indexscan = off")
                rows = await conn.fetch(statement.sql, *statement.args)
            assert [int(row["key"][1:]) for row in rows] == want
    finally:
        await conn.close()


@pytest.mark.citus
async def test_the_rebalancer_moves_shards_while_writes_continue(
    citus_cluster: CitusCluster, on_cluster: Make
) -> None:
    """Every shard of the store moved to one worker, then ``citus_rebalance_start()``
    spreading them again by logical replication (``wal_level = logical``, set here:
    cluster.sh does not) while writers go on: every acknowledged write is a version of its
    memory, numbered without a gap."""
    if not citus_cluster.local:
        pytest.skip("restarts every node: needs the cluster this session started")
    for port in citus_cluster.node_ports():
        await _logical(citus_cluster, port)
    for port in reversed(citus_cluster.node_ports()):  # the workers, then the coordinator
        citus_cluster.stop_node(port)
        citus_cluster.start_node(port)
    config = on_cluster()
    owners = [f"owner{i}" for i in range(12)]
    acknowledged: dict[tuple[str, str], int] = {}
    rebalancing = True

    async def writer(store: PostgresStorage[str, Any], number: int) -> None:
        round_ = 0
        while rebalancing or round_ < 2:
            for owner in owners:
                key = f"k{round_ % 3}"  # writers share keys: their versions interleave
                text = f"{owner} write {number}.{round_}"
                await store.store(key, text, scope="user", scope_id=owner)
                acknowledged[(owner, key)] = acknowledged.get((owner, key), 0) + 1
            round_ += 1

    table = f"{config.schema_name}.{config.table}"
    async with _store(config) as store:
        conn = await asyncpg.connect(citus_cluster.dsn)
        try:
            assert await conn.fetchval("SHOW wal_level") == "logical"
            placements = await conn.fetch(
                "SELECT s.shardid, n.nodename, n.nodeport FROM pg_dist_shard s "
                "JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid) "
                "WHERE s.logicalrelid = $1::regclass",
                table,
            )
            first = min(placement["nodeport"] for placement in placements)
            for placement in placements:  # all on the first worker: the rebalancer has work
                if placement["nodeport"] != first:
                    await conn.execute(
                        "SELECT citus_move_shard_placement($1, $2, $3, $2, $4, "
                        "shard_transfer_mode => 'block_writes')",
                        placement["shardid"],
                        placement["nodename"],
                        placement["nodeport"],
                        first,
                    )
            writers = [asyncio.create_task(writer(store, number)) for number in range(3)]
            try:
                await asyncio.sleep(0.3)
                await conn.execute(
                    "SELECT citus_rebalance_start(shard_transfer_mode => 'force_logical')"
                )
                await conn.execute("SELECT citus_rebalance_wait()")
                nodes = await conn.fetchval(
                    "SELECT count(DISTINCT n.nodeport) FROM pg_dist_shard s "
                    "JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid) "
                    "WHERE s.logicalrelid = $1::regclass",
                    table,
                )
            finally:
                rebalancing = False
                await asyncio.gather(*writers)
        finally:
            await conn.close()
        assert nodes == 2  # spread again
        assert citus_cluster.deadlocks() == 0  # none detected, on any node, in the session
        for (owner, key), writes in acknowledged.items():
            versions = [v.version for v in await store.history(key, scope="user", scope_id=owner)]
            assert versions == list(range(writes, 0, -1)), (owner, key)


async def _logical(cluster: CitusCluster, port: int) -> None:
    """``wal_level = logical`` on the node at ``port`` (from its next start)."""
    coordinator = cluster.node_ports()[0]
    node = await asyncpg.connect(cluster.dsn.replace(f":{coordinator}/", f":{port}/"))
    try:
        await node.execute("ALTER SYSTEM SET wal_level = logical")
    finally:
        await node.close()
