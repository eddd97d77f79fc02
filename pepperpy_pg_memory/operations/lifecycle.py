"""Starting and closing a store: the server, the table's migrations, the pool's session
settings, read replicas, the embedder check and the online backfills."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg

from .. import backfill
from ..config import PostgresConfig
from ..database import Database, connect
from ..distribution import PROPAGATE_SETTINGS, Distribution, check_distribution
from ..distribution import distribute as distribute_tables
from ..embedded import EmbeddedServer, acquire_embedded, release_embedded
from ..embedded_replicas import EmbeddedReplica, acquire_replicas, release_replicas
from ..embeddings import Embedder, embedder_identity
from ..errors import DimensionMismatchError, EmbedderMismatchError, MemoryConfigurationError
from ..faults import translate
from ..history import setting_statement
from ..metrics import Metrics
from ..replicas import ReadRouter
from ..schema import (
    APPLICATION_NAME,
    CLIENT_SCHEMA_SETTING,
    HISTORY_SETTING,
    QUOTA_SETTING,
    SCHEMA_VERSION,
    TENANT_SETTING,
    TableLayout,
    ensure_database,
    ensure_fillfactor,
    ensure_metadata_indexes,
    migrate,
    vector_schema,
    vector_type_for,
)
from ..shutdown import cancel_and_wait
from ..sql import Session
from ..tenancy import (
    APPLICATION_ROLE,
    check_binding,
    check_row_level_security_applies,
    ensure_application_role,
)
from ..tenancy import (
    grant_tenant as grant_tenant_role,
)
from ..types import ProgressCallback
from .started import Started
from .upkeep import Relayout, holds_vectors, record_embedder, reindex_semantic

__all__ = [
    "Attachments",
    "attach_server",
    "wanted_layout",
    "prepare_table",
    "session_settings",
    "transaction_settings",
    "open_replicas",
    "check_embedder",
    "pending_backfills",
    "run_backfills",
    "release",
    "grant_tenant",
    "in_background",
    "stop_background",
]

logger = logging.getLogger(__name__)


@dataclass
class Attachments:
    """What ``start()`` opened besides the pool, for ``close()`` to release."""

    server: EmbeddedServer | None = None
    router: ReadRouter | None = None
    replicas: builtins.list[EmbeddedReplica] = field(default_factory=list)
    backfill: asyncio.Task[None] | None = None
    """The online backfill running in the background, if any."""


async def attach_server(config: PostgresConfig, attached: Attachments) -> str:
    """The DSN to connect to: on an embedded config, the server started (or joined) and its
    database made if missing."""
    if not config.is_embedded:
        return config.connection_dsn()
    server = attached.server = await acquire_embedded(config.data_dir)
    async with connect(config, server.uri("postgres")) as session:
        await ensure_database(session, config.database)
    return server.uri(config.database)


@contextlib.asynccontextmanager
async def _start_connection(config: PostgresConfig, dsn: str) -> AsyncIterator[Session]:
    """A connection of ``start()``'s own, outside the pool (migrations run on it), closed
    after; the server's errors as ours."""
    async with connect(config, dsn) as session:
        try:
            yield session
        except asyncpg.PostgresError as exc:
            raise translate(exc, "start") from exc


def wanted_layout(config: PostgresConfig, embedder: Embedder, dimension: int) -> TableLayout:
    """The layout ``config`` asks for, for ``embedder`` (its dimension and identity)."""
    return TableLayout(
        schema=config.schema_name,
        table=config.table,
        dimension=dimension,
        vector_type=vector_type_for(dimension, config.vector_type),
        text_search_config=config.text_search_config,
        hnsw_m=config.hnsw_m,
        hnsw_ef_construction=config.hnsw_ef_construction,
        embedder=embedder_identity(embedder, dimension),
        distance=config.distance,
    )


async def prepare_table(
    config: PostgresConfig, dsn: str, wanted: TableLayout, tenant: str, attached: Attachments
) -> tuple[TableLayout, str, str]:
    """Create or upgrade the table (and its row-level security, metadata indexes); returns
    the layout recorded, the schema pgvector lives in and the DSN the pool connects to.

    Under row-level security on the embedded server the stores connect as an ordinary role
    (policies do not restrict its superuser): the superuser migrates the tables, which it
    keeps owning (so the stores cannot switch the policies off), and grants the role their
    use.
    """
    if config.is_embedded and config.row_level_security:
        assert attached.server is not None
        async with _start_connection(config, dsn) as session:
            layout = await migrate(session, wanted, row_level_security=True)
            await ensure_metadata_indexes(session, layout, config.indexed_fields)
            if config.fillfactor is not None:
                await ensure_fillfactor(session, layout, config.fillfactor)
            await ensure_application_role(session, layout)
        dsn = attached.server.uri(config.database, role=APPLICATION_ROLE)
    async with _start_connection(config, dsn) as session:
        if config.row_level_security:
            await check_row_level_security_applies(session)
        layout = await migrate(session, wanted, row_level_security=config.row_level_security)
        if config.row_level_security:
            await check_binding(session, layout, tenant)
        placed = await check_distribution(session, layout, config.distribution)
        layout = dataclasses.replace(layout, distribution=placed)
        for name in await ensure_metadata_indexes(session, layout, config.indexed_fields):
            logger.info("created metadata index %s", name)
        # (Under row-level security on the embedded server the superuser did it above; the
        # role finds it done.)
        if config.fillfactor is not None:
            if await ensure_fillfactor(session, layout, config.fillfactor):
                logger.info("table %s now fills new pages to %d%%", layout.table, config.fillfactor)
        vectors_in = await vector_schema(session)
    if config.vector_type is not None and layout.vector_type != config.vector_type:
        raise MemoryConfigurationError(
            f"table {layout.schema}.{layout.table} stores its vectors as {layout.vector_type}, "
            f"not {config.vector_type}: configure vector_type={layout.vector_type!r} (or "
            "leave it out), or use another table",
            field="vector_type",
        )
    if layout.text_search_config != config.text_search_config:
        logger.warning(
            "table %s.%s is indexed with text search configuration %r, not %r: run "
            "reindex(MemoryIndex.CONTEXTUAL) to switch",
            layout.schema,
            layout.table,
            layout.text_search_config,
            config.text_search_config,
        )
    return layout, vectors_in, dsn


def session_settings(config: PostgresConfig, tenant: str) -> dict[str, str]:
    """The settings every pooled session starts with."""
    return {
        "application_name": APPLICATION_NAME,
        # Tells the schema's guard that these connections know per-owner identity.
        CLIENT_SCHEMA_SETTING: str(SCHEMA_VERSION),
        "hnsw.ef_search": str(config.hnsw_ef_search),
        "hnsw.iterative_scan": config.hnsw_iterative_scan,
        "pg_trgm.word_similarity_threshold": str(config.trigram_threshold),
        # Memory lookups are short OLTP queries: starting parallel workers or JIT compiling
        # costs more (milliseconds) than the queries themselves.
        "max_parallel_workers_per_gather": "0",
        "jit": "off",
        # asyncpg prepares every statement; after five runs PostgreSQL may switch to a
        # generic plan that cannot see the query vector, the limit or the filters, and
        # picks scans ten times slower. Plan each execution for its values.
        "plan_cache_mode": "force_custom_plan",
        HISTORY_SETTING: "on" if config.history else "off",
        # The tenant every statement names ("" without one): under row-level security
        # the policies read it (a role bound to a tenant is held to its binding instead).
        TENANT_SETTING: tenant,
        **(
            {QUOTA_SETTING: str(config.max_memories_per_owner)}
            if config.max_memories_per_owner is not None
            else {}
        ),
    }


def transaction_settings(config: PostgresConfig, tenant: str, layout: TableLayout) -> str | None:
    """On a Citus cluster, the session settings the workers need, as the SET LOCAL
    statements every operation starts with (statements and triggers run on the workers,
    which see no session setting of ours): those the triggers read, and the index scans'
    (HNSW's search width, the trigram threshold); None otherwise."""
    if not layout.distributed:
        return None
    settings = session_settings(config, tenant)
    on_workers = (
        CLIENT_SCHEMA_SETTING,
        HISTORY_SETTING,
        TENANT_SETTING,
        QUOTA_SETTING,
        "hnsw.ef_search",
        "hnsw.iterative_scan",
        "pg_trgm.word_similarity_threshold",
    )
    # Citus forwards SET LOCAL to the workers only when told to, in the transaction too.
    return "; ".join(
        [
            setting_statement(PROPAGATE_SETTINGS, "local"),
            *(setting_statement(name, settings[name]) for name in on_workers if name in settings),
        ]
    )


async def distribute(
    started: Started[Any], distribution: Distribution, progress: ProgressCallback | None
) -> TableLayout:
    """Distribute the store's tables on its Citus cluster (see distribution.distribute);
    the layout that says so."""
    layout = started.layout
    await started.database.run(
        "distribute",
        lambda session: distribute_tables(session, layout, distribution, progress),
    )
    return dataclasses.replace(layout, distribution=distribution)


async def open_replicas(
    config: PostgresConfig,
    database: Database,
    metrics: Metrics,
    attached: Attachments,
    vectors_in: str,
    settings: dict[str, str],
) -> ReadRouter | None:
    """A router over the configured read replicas (embedded ones started), or None."""
    dsns = [dsn.get_secret_value() for dsn in config.read_replicas]
    if config.embedded_replicas:
        assert attached.server is not None
        attached.replicas = await acquire_replicas(attached.server, config.embedded_replicas)
        dsns += [replica.uri(config.database) for replica in attached.replicas]
    if not dsns:
        return None
    router = attached.router = ReadRouter(config, database, metrics, dsns)
    await router.open(vectors_in, settings)
    await router.mark_written()  # the migrations, made outside the pool
    return router


async def check_embedder(started: Started[Any], dimension: int, relayout: Relayout[Any]) -> None:
    """Make sure the table's vectors are the current model's: adopt it for a table without
    vectors, re-embed if configured to, else refuse to start."""
    layout, identity, config = started.layout, started.embedder_identity, started.config
    if layout.embedder == identity:
        return
    where = f"table {layout.schema}.{layout.table}"
    if layout.dimension == dimension and not await holds_vectors(started):
        await record_embedder(started, relayout)
        return
    if "reindex" in (config.on_embedder_change, config.on_dimension_mismatch):
        logger.warning(
            "%s holds vectors of %s; re-embedding every memory with %s",
            where,
            layout.embedder,
            identity,
        )
        await reindex_semantic(started, None, True, None, relayout)
        return
    if layout.dimension != dimension:
        raise DimensionMismatchError(
            f"{where} holds {layout.dimension}-dimensional embeddings but the embedder "
            f"produces {dimension}: start with PostgresConfig(on_embedder_change='reindex') "
            "to re-embed every memory with the new model, or use the model the table was "
            "built with",
            expected=layout.dimension,
            actual=dimension,
        )
    raise EmbedderMismatchError(
        f"{where} holds vectors of {layout.embedder}, not of this store's embedder "
        f"{identity}: searching would compare two models' vectors. Start with "
        "PostgresConfig(on_embedder_change='reindex') to re-embed every memory with it, "
        "or use the model the table was built with",
        recorded=str(layout.embedder),
        current=identity,
    )


async def pending_backfills(started: Started[Any]) -> list[backfill.Backfill]:
    """The online backfills of the tenant's memories still to run."""
    database, layout, tenant = started.database, started.layout, started.tenant
    return [
        item
        for item in backfill.BACKFILLS_TO_RUN
        if not await backfill.finish_if_idle(database, layout, item, tenant)
    ]


async def run_backfills(started: Started[Any], progress: ProgressCallback | None) -> int:
    """Run the pending online backfills to the end; how many memories they changed."""
    changed = 0
    for item in backfill.BACKFILLS_TO_RUN:
        changed += await backfill.run(
            started.database,
            started.layout,
            item,
            started.tenant,
            batch_size=started.config.maintenance_batch_size,
            progress=progress,
        )
    return changed


async def release(attached: Attachments, database: Database) -> None:
    """Close the replicas' router and the pool, then let go of embedded replicas and the
    embedded server (shared between stores and counted: the last one stops them)."""
    router, attached.router = attached.router, None
    if router is not None:
        await router.close()
    await database.close()
    server, attached.server = attached.server, None
    replicas, attached.replicas = attached.replicas, []
    if server is not None:
        await release_replicas(server, replicas)
        await release_embedded(server)


async def grant_tenant(started: Started[Any], role: str, tenant: str) -> None:
    """Bind ``role`` to ``tenant`` and grant it the use of the store's tables."""
    await started.database.run(
        "grant_tenant", partial(grant_tenant_role, started.layout, role, tenant)
    )


def in_background(work: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[None]:
    """Run ``work`` as a task that logs, rather than raises, its failure (the next start()
    or complete_backfills() resumes a backfill)."""

    async def run() -> None:
        try:
            await work
        except Exception:
            logger.warning(
                "%s stopped; the next start() or complete_backfills() resumes it",
                what,
                exc_info=True,
            )

    return asyncio.get_running_loop().create_task(run())


async def stop_background(attached: Attachments) -> None:
    """Cancel background work: a backfill's batch under way rolls back, and the next start
    resumes after the last committed one."""
    task, attached.backfill = attached.backfill, None
    await cancel_and_wait(task)
