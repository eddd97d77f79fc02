"""Upkeep: expired memories swept, history trimmed, indexes rebuilt, figures for monitoring,
consolidation's summaries."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from .. import backfill, maintenance
from ..consolidation import SOURCES_FIELD, Consolidation, ConsolidationReport, Summarizer
from ..errors import MemoryConfigurationError, MemoryValidationError
from ..history import Change, check_note
from ..items import Scope, as_enum
from ..metrics import instrumented
from ..models import MemoryEntry
from ..queries import Restriction
from ..replicas import ReadRouter
from ..schema import TableLayout, vector_type_for
from ..sql import Query, Session
from ..types import Identity, MemoryIndex, MemoryType, ProgressCallback
from . import conversing
from .rows import identity_of
from .started import Started
from .writing import write_one

__all__ = [
    "Relayout",
    "cleanup_expired",
    "index_owner",
    "reindex",
    "reindex_semantic",
    "reindex_contextual",
    "record_embedder",
    "holds_vectors",
    "write_summary",
    "consolidate",
    "stats",
]

logger = logging.getLogger(__name__)

V = TypeVar("V")

Relayout = Callable[[TableLayout], Started[V]]
"""The store's way to take a new layout (after a conversion, a reindex): it builds and keeps
the context for it, and returns it."""


@instrumented("cleanup_expired")
async def cleanup_expired(started: Started[Any], restriction: Restriction, batch: int) -> int:
    """Delete expired memories in batches of ``batch``, then trim the history; how many."""
    if started.layout.distribution == "owner" and restriction.owner is None:
        total = await _sweep_owner_by_owner(started, restriction, batch)
    else:
        total = await _sweep(started, restriction, batch)
    if started.statements.refreshes is not None:
        stale = started.statements.delete_stale_refreshes(restriction, batch)
        while await started.database.execute("cleanup_expired", stale) == batch:
            pass
    await trim_history(started)
    return total


async def _sweep(started: Started[Any], restriction: Restriction, batch: int) -> int:
    sweep = started.statements.delete_expired_batch(restriction, batch)
    total = 0
    while True:
        deleted = await started.database.execute("cleanup_expired", sweep)
        total += deleted
        if deleted < batch:
            return total


async def _sweep_owner_by_owner(started: Started[Any], restriction: Restriction, batch: int) -> int:
    total = 0
    while True:
        owners = await started.database.fetch(
            "cleanup_expired", started.statements.matching_owners(restriction, batch, True)
        )
        swept = 0
        for owner in owners:
            one = restriction.of_owner(owner["scope"], owner["scope_id"])
            swept += await _sweep(started, one, batch)
        total += swept
        # An owner whose expired rows are all locked by writers yields nothing: stop
        # rather than find it again.
        if len(owners) < batch or swept == 0:
            return total


@instrumented("consolidate")
async def consolidate(
    started: Started[V],
    restriction: Restriction,
    *,
    promote_after: int,
    merge_threshold: float,
    summarize: Summarizer | None,
    dry_run: bool,
    include_managed: bool,
    actor: str | None,
    progress: ProgressCallback | None,
) -> ConsolidationReport:
    """Promote, merge and summarise each owner's memories within ``restriction``."""
    actor = check_note(actor, "actor")
    run = Consolidation(
        database=started.database,
        statements=started.statements,
        tenant=started.tenant,
        promote_after=promote_after,
        merge_threshold=merge_threshold,
        include_managed=include_managed,
        dry_run=dry_run,
        actor=actor,
        entry=started.rows.entry,
        write_summary=partial(write_summary, started, actor=actor),
    )
    return await run.run(restriction, summarize, progress)


async def write_summary(
    started: Started[V],
    owner: Identity,
    text: str,
    sources: builtins.list[MemoryEntry[V]],
    *,
    actor: str | None,
) -> str:
    """Store consolidation's summary of ``sources`` as an episodic memory of ``owner``."""
    write = started.prepare(
        owner.key,
        text,
        type=MemoryType.EPISODIC,
        scope=owner.scope,
        scope_id=owner.scope_id,
        indices=None,
        metadata={SOURCES_FIELD: [entry.key for entry in sources]},
        ttl=None,
        expires_at=None,
        embedding=None,
        text=None,
        passages=None,
        importance=max(entry.importance for entry in sources),
    )
    write.change = Change(
        None, check_note(actor, "actor"), f"summary of {len(sources)} short-term memories"
    )
    summary = await write_one(started, write, text)
    return summary.key


async def stats(
    started: Started[Any], queued_stores: int, backfilling: bool, router: ReadRouter | None
) -> dict[str, Any]:
    """Figures for monitoring (see ``PostgresStorage.stats``)."""
    figures = await started.reads.run(
        "stats", partial(maintenance.table_figures, started.statements, started.tenant)
    )
    pool = started.database.pool
    metrics = started.metrics
    figures["pool"] = {
        "size": pool.get_size(),
        "idle": pool.get_idle_size(),
        "in_use": pool.get_size() - pool.get_idle_size(),
        "waiting": metrics.waiting,
        "max_size": pool.get_max_size(),
    }
    figures["operations"] = {
        name: figure.as_dict() for name, figure in sorted(metrics.operations.items())
    }
    figures["errors"] = dict(metrics.errors)
    cache = started.vectors.cache
    lookups = cache.hits + cache.misses
    figures["embedding_cache"] = {
        "entries": len(cache),
        "hits": cache.hits,
        "misses": cache.misses,
        "hit_rate": cache.hits / lookups if lookups else None,
    }
    figures["dimension"] = started.layout.dimension
    figures["embedder"] = started.layout.embedder
    figures["queued_stores"] = queued_stores
    figures["backfill_pending"] = backfilling
    figures["replicas"] = [] if router is None else router.stats()
    figures["primary_reads"] = None if router is None else router.primary_reads
    return figures


async def trim_history(started: Started[Any]) -> None:
    """Trim the tenant's history to ``history_max_versions`` and ``history_max_age``."""
    config, history = started.config, started.history
    trims = []
    if config.history_max_versions is not None:
        trims.append(history.trim_versions(started.tenant, config.history_max_versions))
    if config.history_max_age is not None:
        trims.append(history.trim_older_than(started.tenant, config.history_max_age))
    for trim in trims:
        await started.database.execute(
            "cleanup_expired", trim, timeout=started.config.maintenance_timeout
        )


@instrumented("index_owner")
async def index_owner(
    started: Started[Any], scope: Scope, scope_id: str | None, *, drop: bool = False
) -> bool:
    """Build (or, with ``drop``, drop) the vector index of one owner's memories; whether the
    index is there and valid afterwards (with ``drop``: whether there was one)."""
    owner = started.restriction(scope, scope_id).owner
    if owner is None:
        raise MemoryValidationError("an owner's index needs its scope (and scope_id)")
    layout, named = started.layout, (started.tenant, *owner)
    timeout = started.config.maintenance_timeout

    async def work(session: Session) -> bool:
        # The predicate's literals are written for standard_conforming_strings.
        literal_rules = await session.fetchval(CONFORMING_STRINGS)
        if literal_rules != "on":
            raise MemoryConfigurationError(
                "an owner's index needs standard_conforming_strings = on (the default)"
            )
        state = await session.fetchval(layout.owner_index_valid(*named))
        if state is True and not drop:
            # Nothing to do. (Asked again, Citus' concurrent build marked the coordinator's
            # index invalid before it found that the index exists, and left it so.)
            return True
        if drop or state is False:  # False: an interrupted build left it invalid
            await session.execute(layout.drop_owner_index(*named), timeout=timeout)
            if drop:
                return state is not None
        await session.execute(layout.owner_index_statement(*named), timeout=timeout)
        return bool(await session.fetchval(layout.owner_index_valid(*named)))

    return await started.database.run_alone("index_owner", work)


CONFORMING_STRINGS = Query("SELECT current_setting('standard_conforming_strings')")


async def reindex(
    started: Started[V],
    index: MemoryIndex | str,
    batch_size: int | None,
    resume: bool,
    progress: ProgressCallback | None,
    relayout: Relayout[V],
) -> int:
    """Rebuild ``index`` (SEMANTIC: re-embed; CONTEXTUAL: the word indexes); how many
    memories it covers."""
    index = as_enum(MemoryIndex, index, "index")
    if index is MemoryIndex.SEMANTIC:
        return await reindex_semantic(started, batch_size, resume, progress, relayout)
    if index is MemoryIndex.CONTEXTUAL:
        return await reindex_contextual(started, progress, relayout)
    raise MemoryValidationError(f"{index.name} is a query mode, not an index to rebuild")


async def reindex_semantic(
    started: Started[V],
    batch_size: int | None,
    resume: bool,
    progress: ProgressCallback | None,
    relayout: Relayout[V],
) -> int:
    """Re-embed every live memory with the current embedder, in identity order, resumable;
    converts the column first if the embedder's dimension is another. How many."""
    batch = batch_size or started.config.embedding_batch_size * 4
    dimension = await started.vectors.model_dimension()
    if dimension != started.layout.dimension:
        started = await convert_dimension(started, dimension, relayout)
        resume = False
    statements, database, tenant, layout = (
        started.statements,
        started.database,
        started.tenant,
        started.layout,
    )
    cursor: Identity | None = None
    if resume:
        cursor = await unfinished_reindex(started)
    total = int(await database.fetchval("reindex", statements.count_semantic(tenant)))
    done = 0
    if cursor is not None:
        logger.info("resuming an interrupted semantic reindex of %s", started.layout.table)
    started.vectors.cache.clear()  # vectors from the previous model must not be reused
    # Each re-embedded row would go through the HNSW graph (about 1 ms a row); without the
    # index the updates are plain writes and the graph is built once at the end. Semantic
    # searches meanwhile scan exactly (correct, slower); if the run is interrupted, the
    # next start() or reindex() builds the index again.
    rebuild = cursor is None and 0 < started.config.bulk_index_rebuild_rows <= total
    if cursor is None:
        start = backfill.save_position(layout, backfill.REEMBED, tenant, None, 0, start=True)
        steps = [start]
        if layout.embedder is not None and layout.embedder != started.embedder_identity:
            # Versions keep vectors of the model they were written with; a query of the
            # new model must not be compared with them.
            steps.append(started.history.forget_vectors(tenant))
        await database.execute_all("reindex", steps, timeout=started.config.maintenance_timeout)
    if rebuild:
        await database.execute("reindex", started.layout.drop_vector_index())
    while True:
        rows = await database.fetch(
            "reindex",
            statements.reindex_batch(tenant, cursor or maintenance.START, batch),
        )
        if not rows:
            break
        # A conversation's turn gets the vector its write gave it (see conversations.py).
        vectors = await conversing.indexed_vectors(
            started, [row["content"] for row in rows], [row["conversation"] for row in rows]
        )
        records = [
            (tenant, *identity_of(row), vector, row["content_hash"])
            for row, vector in zip(rows, vectors, strict=True)
        ]
        cursor = identity_of(rows[-1])
        reached = backfill.save_position(layout, backfill.REEMBED, tenant, list(cursor), len(rows))
        await database.run(
            "reindex", partial(maintenance.write_reindexed, statements, records, reached)
        )
        done += len(rows)
        if progress is not None:
            progress(min(done, total), total)
    await reindex_passages(started, batch)
    over = backfill.save_position(layout, backfill.REEMBED, tenant, None, 0, finished=True)
    steps = [over, statements.save_reindex_cursor(None)]
    if layout.embedder is not None and layout.embedder != started.embedder_identity:
        # A version replaced (or deleted) while the walk ran, before it reached the
        # memory's row, was recorded with the previous model's vector from that row.
        walk = await database.fetchrow(
            "reindex", backfill.saved_position(layout, backfill.REEMBED, tenant)
        )
        if walk is not None and walk["started_at"] is not None:
            steps.append(started.history.forget_vectors(tenant, since=walk["started_at"]))
    await database.execute_all("reindex", steps)
    # Every vector is now the current model's.
    started = await record_embedder(started, relayout)
    if rebuild:
        await database.execute_all(
            "reindex",
            started.layout.build_vector_index(started.config.maintenance_work_mem),
            timeout=started.config.maintenance_timeout,
        )
    return done


async def unfinished_reindex(started: Started[V]) -> Identity | None:
    """Where an interrupted semantic reindex of this tenant stopped, if one did."""
    row = await started.database.fetchrow(
        "reindex", backfill.saved_position(started.layout, backfill.REEMBED, started.tenant)
    )
    if row is not None:
        position = row["position"]
        if row["finished"] or not position:
            return None
        return Identity(*position)
    # Releases before the backfill table kept one position per table in the registry.
    saved = await started.database.reading.fetchval(
        "reindex", started.statements.load_reindex_cursor()
    )
    return maintenance.decode_cursor(saved, started.tenant)


async def reindex_passages(started: Started[V], batch: int) -> None:
    """Re-embed every passage of the tenant, in identity order. (Not resumable on its
    own: an interrupted run's next call embeds them all again; passages are few.)"""
    statements, tenant = started.statements, started.tenant
    after: tuple[Any, ...] = ("", "", "", -1)
    while True:
        rows = await started.database.reading.fetch(
            "reindex", statements.passages_batch(tenant, after, batch)
        )
        if not rows:
            return
        vectors = await started.vectors.embed([row["content"] for row in rows])
        await started.database.executemany(
            "reindex",
            statements.set_passage_embeddings().for_each(
                (tenant, row["scope"], row["scope_id"], row["key"], row["position"], vector)
                for row, vector in zip(rows, vectors, strict=True)
            ),
        )
        last = rows[-1]
        after = (last["scope"], last["scope_id"], last["key"], last["position"])


async def convert_dimension(
    started: Started[V], dimension: int, relayout: Relayout[V]
) -> Started[V]:
    """Retype the embedding column for a new model; every stored vector is dropped."""
    old = started.layout
    chosen = vector_type_for(dimension, started.config.vector_type)
    new = replace(old, dimension=dimension, vector_type=chosen)
    logger.warning(
        "converting %s.%s embeddings from %d to %d dimensions; every memory is re-embedded",
        old.schema,
        old.table,
        old.dimension,
        dimension,
    )
    await started.database.run(
        "reindex",
        partial(maintenance.convert_dimension, old, new, started.config.maintenance_timeout),
    )
    # Cached statements describe the old column type.
    await started.database.expire_connections()
    return relayout(new)


async def reindex_contextual(
    started: Started[V], progress: ProgressCallback | None, relayout: Relayout[V]
) -> int:
    """Rebuild the full-text and trigram indexes (in the configured text search
    configuration); how many memories they cover."""
    layout = started.layout
    wanted = started.config.text_search_config
    count = await started.database.run(
        "reindex",
        partial(
            maintenance.rebuild_contextual,
            layout,
            wanted,
            started.tenant,
            started.config.maintenance_timeout,
        ),
    )
    if layout.text_search_config != wanted:
        relayout(replace(layout, text_search_config=wanted))
    if progress is not None:
        progress(count, count)
    return count


async def record_embedder(started: Started[V], relayout: Relayout[V]) -> Started[V]:
    """Record that the table's vectors are the current embedder's."""
    started = relayout(replace(started.layout, embedder=started.embedder_identity))
    await started.database.execute("reindex", started.statements.record_embedder())
    return started


async def holds_vectors(started: Started[Any]) -> bool:
    """Whether any memory of the table has a vector."""
    return bool(
        await started.database.reading.fetchval("start", started.statements.holds_vectors())
    )
