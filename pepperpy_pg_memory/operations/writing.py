"""Writes of memories: one ``store()`` call, concurrent calls in batches, ``store_many``.

Every write is planned first (checked, embedded as little as possible: the cache, then the
stored vector of an unchanged text, then the model), then sent in one transaction; a row the
upsert left without a vector (its text changed concurrently) is embedded after.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any, Literal, TypeVar

import asyncpg

from ..bulk import write_batch
from ..bulk import write_deduplicated as write_deduplicated_row
from ..bulk import write_one as write_one_row
from ..coalesce import Coalescer, together_or_alone
from ..config import PostgresConfig
from ..dedupe import BatchDeduplication
from ..errors import MemoryError, MemoryValidationError
from ..gc_pause import cyclic_gc_paused
from ..history import Change
from ..items import PendingWrite, item_fields, verbatim
from ..models import MemoryEntry, StoredCount, trusted
from ..queries import AS_STORED_COLUMNS
from ..types import Identity, ProgressCallback
from .rows import identity_of, owner_of
from .started import Started

__all__ = [
    "StoreCall",
    "timeout_for",
    "plan_embeddings",
    "passage_rows",
    "repair_embeddings",
    "reinforcing",
    "write_deduplicated",
    "store_batch",
    "write_one",
    "store",
    "store_items",
    "store_many",
    "dedupe_rule",
    "store_queue",
]

logger = logging.getLogger(__name__)

V = TypeVar("V")

BULK_WRITE_ROWS = 1_000
"""A ``store_many`` of at least this many rows runs under ``config.maintenance_timeout``."""

StoreCall = tuple[PendingWrite, Any]
"""One ``store()`` call waiting for its batch: the prepared write and the caller's value."""

STORE_BATCH_ROWS = 256
"""The most concurrent ``store()`` calls written together in one batch."""


def store_queue(
    config: PostgresConfig,
    run: Callable[[builtins.list[StoreCall]], Awaitable[builtins.list[Any]]],
) -> Coalescer[StoreCall, Any]:
    """Where concurrent ``store()`` calls wait to be written together by ``run`` (usually
    :func:`store_batch`): in batches, on half the pool at most, so that a burst of thousands
    costs a few COPYs instead of a queue for connections."""
    return Coalescer(
        "store",
        run,
        lanes=max(1, config.max_size // 2),
        max_batch=STORE_BATCH_ROWS,
        wait_timeout=config.pool_timeout,
    )


def timeout_for(started: Started[V], rows: int) -> float:
    """Seconds per statement for work on ``rows`` rows at once.

    A bulk load's statements do work that grows with the batch (and may rebuild the
    index): they get the maintenance timeout, not the one meant for single reads/writes.
    """
    if rows >= BULK_WRITE_ROWS:
        return started.config.maintenance_timeout
    return started.config.command_timeout


async def plan_embeddings(
    started: Started[V],
    writes: builtins.list[PendingWrite],
    progress: ProgressCallback | None = None,
) -> None:
    """Give every write that needs one an embedding, embedding as little as possible.

    The cache answers texts embedded recently; a memory whose stored text is unchanged
    keeps its stored vector (the upsert leaves it in place when sent NULL); only the rest
    reach the model, deduplicated, in batches.
    """
    cache = started.vectors.cache
    await embed_passages(started, writes)
    missing: builtins.list[PendingWrite] = []
    for write in writes:
        if write.wants_embedding and write.embedding is None:
            write.embedding = cache.get(write.content_hash)
            if write.embedding is None:
                missing.append(write)
    if missing:
        rows = await started.database.reading.fetch(
            "store",
            started.statements.known_hashes(started.tenant, [w.identity for w in missing]),
            timeout=timeout_for(started, len(missing)),
        )
        stored = {identity_of(row): bytes(row["content_hash"]) for row in rows}
        missing = [w for w in missing if stored.get(w.identity) != w.content_hash]
    if missing:
        vectors = await started.vectors.embed([w.text for w in missing], progress)
        for write, vector in zip(missing, vectors, strict=True):
            write.embedding = vector
            cache.put(write.content_hash, vector)


async def embed_passages(started: Started[V], writes: builtins.list[PendingWrite]) -> None:
    """Vectors for the writes' passages: from the cache, else from the model."""
    todo = [w for w in writes if w.passages and w.passage_vectors is None]
    texts = [text for w in todo for text in w.passages]
    if not texts:
        return
    vectors = await started.vectors.embed_cached(texts)
    start = 0
    for write in todo:
        write.passage_vectors = vectors[start : start + len(write.passages)]
        start += len(write.passages)


def passage_rows(
    started: Started[V], writes: Iterable[PendingWrite]
) -> builtins.list[tuple[Any, ...]]:
    """Passage rows of ``writes``, for COPY (and, if any, searches use passages now)."""
    rows = []
    for write in writes:
        if write.passages:
            assert write.passage_vectors is not None
            for position, (text, vector) in enumerate(
                zip(write.passages, write.passage_vectors, strict=True)
            ):
                rows.append((started.tenant, *write.identity, position, text, vector))
    if rows:
        started.state.passages_seen = True
    return rows


async def repair_embeddings(
    started: Started[V],
    identities: builtins.list[Identity],
    writes: Mapping[Identity, PendingWrite],
) -> None:
    """Embed rows the upsert left without a vector (their text changed concurrently)."""
    todo = [writes[identity] for identity in identities if identity in writes]
    if not todo:
        return
    vectors = await started.vectors.embed([w.text for w in todo])
    await started.database.executemany(
        "store",
        started.statements.set_embeddings().for_each(
            (started.tenant, *w.identity, vector, w.content_hash)
            for w, vector in zip(todo, vectors, strict=True)
        ),
        timeout=timeout_for(started, len(todo)),
    )


def reinforcing(write: PendingWrite) -> Change:
    """What the history records when ``write`` is folded into a memory it duplicates:
    the write's key and text, after its reason."""
    trace = f"duplicate {write.key!r}: {write.text}"
    reason = write.change.reason
    return Change(
        "reinforce", write.change.actor, trace if reason is None else f"{reason} ({trace})"
    )


async def write_deduplicated(
    started: Started[V], write: PendingWrite, value: Any, threshold: float | None
) -> MemoryEntry[V]:
    await plan_embeddings(started, [write])
    reinforcing_change = reinforcing(write)
    row, duplicate = await started.database.run(
        "store",
        partial(
            write_deduplicated_row,
            started.statements,
            started.tenant,
            write,
            threshold,
            passage_rows(started, [write]),
            reinforcing_change,
        ),
    )
    if duplicate:
        started.term_stats.note_writes(1, [owner_of(row)])
        return started.rows.entry(row).model_copy(update={"deduplicated": True})
    return await written(started, write, value, row)


async def store_batch(
    started: Started[V], calls: builtins.list[StoreCall]
) -> builtins.list[MemoryEntry[V] | BaseException]:
    """The outcome of each of ``calls`` (concurrent ``store()`` calls), in order.

    Calls are written in runs in which no memory appears twice (an upsert cannot change
    one row twice) and every write tells the history the same actor and reason, in call
    order: the result is what one-by-one calls would give.
    """
    outcomes: builtins.list[MemoryEntry[V] | BaseException] = []
    run: dict[Identity, StoreCall] = {}
    for call in calls:
        first = next(iter(run.values()), None)
        if call[0].identity in run or (first is not None and first[0].change != call[0].change):
            outcomes += await store_run(started, builtins.list(run.values()))
            run = {}
        run[call[0].identity] = call
    return outcomes + await store_run(started, builtins.list(run.values()))


async def store_run(
    started: Started[V], calls: builtins.list[StoreCall]
) -> builtins.list[MemoryEntry[V] | BaseException]:
    """Distinct memories' writes: in one batch, or one by one if the batch fails."""

    async def together(run: builtins.list[StoreCall]) -> builtins.list[MemoryEntry[V]]:
        rows = await write_together(started, [write for write, _ in run])
        return [stored(started, write, value, rows[write.identity]) for write, value in run]

    return await together_or_alone("store", calls, together, lambda call: write_one(started, *call))


async def write_one(started: Started[V], write: PendingWrite, value: Any) -> MemoryEntry[V]:
    await plan_embeddings(started, [write])
    row = await started.database.run(
        "store",
        partial(
            write_one_row,
            started.statements,
            started.tenant,
            write.record(),
            passage_rows(started, [write]),
            change=write.change,
        ),
    )
    return await written(started, write, value, row)


async def written(
    started: Started[V], write: PendingWrite, value: Any, row: asyncpg.Record
) -> MemoryEntry[V]:
    """The entry one write made, once its text has a vector (see repair_embeddings)."""
    started.term_stats.note_writes(1, [owner_of(row)])
    if row["needs_embedding"]:
        await repair_embeddings(started, [write.identity], {write.identity: write})
    return stored(started, write, value, row)


async def write_together(
    started: Started[V], writes: builtins.list[PendingWrite]
) -> dict[Identity, asyncpg.Record]:
    """Upsert ``writes`` (distinct memories) in one transaction; each one's new row."""
    await plan_embeddings(started, writes)
    rows = await started.database.run(
        "store",
        partial(
            write_batch,
            started.statements,
            started.tenant,
            [write.record() for write in writes],
            0,  # never rebuild the index for a burst: other calls are reading it
            started.config.maintenance_work_mem,
            started.config.command_timeout,
            every_row=True,
            passages=passage_rows(started, writes),
            change=writes[0].change,
            quota=started.config.max_memories_per_owner,
        ),
    )
    started.term_stats.note_writes(len(writes), [write.owner for write in writes])
    by_identity = {identity_of(row): row for row in rows}
    repair = [identity for identity, row in by_identity.items() if row["needs_embedding"]]
    await repair_embeddings(started, repair, {write.identity: write for write in writes})
    return by_identity


def stored(
    started: Started[V], write: PendingWrite, value: Any, row: asyncpg.Record
) -> MemoryEntry[V]:
    return trusted(
        MemoryEntry,
        key=write.key,
        value=value,
        text=write.text,
        type=write.type,
        scope=write.scope,
        scope_id=write.scope_id,
        indices=write.indices,
        metadata=write.metadata,
        embedding=None,
        deduplicated=False,
        **{column: row[column] for column in AS_STORED_COLUMNS},
    )


async def after_bulk_load(started: Started[V]) -> None:
    try:
        await started.database.execute_all(
            "store_many",
            started.layout.after_bulk_load(),
            timeout=started.config.maintenance_timeout,
        )
    except MemoryError as exc:
        # Only an optimisation (autovacuum does the same later): the data is committed.
        logger.info("skipped post-load index maintenance: %s", exc)


async def store_many(
    started: Started[V],
    writes: Mapping[Identity, PendingWrite],
    dedupe: float | None | bool,
    progress: ProgressCallback | None,
) -> StoredCount:
    """Write ``writes`` (distinct memories, checked, one change) in one transaction; with
    ``dedupe`` (a rule, False for none) duplicates reinforce what they repeat."""
    batch = builtins.list(writes.values())
    await plan_embeddings(started, batch, progress)
    config = started.config
    with cyclic_gc_paused():
        deduplication = (
            None
            if dedupe is False
            else BatchDeduplication(started.statements, started.tenant, batch, dedupe, reinforcing)
        )
        work = partial(
            write_batch,
            started.statements,
            started.tenant,
            [write.record() for write in batch],
            config.bulk_index_rebuild_rows,
            config.maintenance_work_mem,
            timeout_for(started, len(batch)),
            passages=passage_rows(started, batch),
            change=batch[0].change,
            dedupe=deduplication,
            quota=config.max_memories_per_owner,
        )
    rows = await started.database.run("store_many", work)
    folded = len(deduplication.duplicates) if deduplication is not None else 0
    started.term_stats.note_writes(len(batch), [write.owner for write in batch])
    await repair_embeddings(started, [identity_of(row) for row in rows], writes)
    if len(batch) >= config.bulk_index_rebuild_rows > 0:
        await after_bulk_load(started)
    return StoredCount(len(batch) - folded, deduplicated=folded)


async def store(
    started: Started[V],
    calls: Coalescer[StoreCall, Any],
    write: PendingWrite,
    value: Any,
    dedupe: bool | float | None,
) -> MemoryEntry[V]:
    """One ``store()``: reinforcing a duplicate when ``dedupe`` (or the configuration) says
    so, else written in the next batch of concurrent calls."""
    rule = dedupe_rule(started.config, dedupe)
    if rule is not False and not verbatim(write.metadata):
        return await write_deduplicated(started, write, value, rule)
    # Batches run on the caller's loop, which must be the pool's.
    started.database.check_loop("store")
    entry: MemoryEntry[V] = await calls.submit((write, value))
    return entry


async def store_items(
    started: Started[V],
    items: Iterable[Any],
    defaults: Mapping[str, Any],
    change: Change,
    dedupe: bool | float | None,
    progress: ProgressCallback | None,
) -> StoredCount:
    """``store_many()``: ``items`` checked over ``defaults`` (the last of a memory given
    twice wins), then written in one transaction."""
    writes: dict[Identity, PendingWrite] = {}
    with cyclic_gc_paused():
        for position, item in enumerate(items):
            fields = item_fields(item, position)
            try:
                write = started.prepare(**{**defaults, **fields})
            except MemoryValidationError as exc:
                # Say which item, keeping the error's own class (DimensionMismatchError...).
                exc.message = f"item {position}: {exc.message}"
                raise
            write.change = change
            # Re-inserted so that the last occurrence decides the order.
            writes.pop(write.identity, None)
            writes[write.identity] = write
    if not writes:
        return StoredCount(0)
    return await store_many(started, writes, dedupe_rule(started.config, dedupe), progress)


def dedupe_rule(
    config: PostgresConfig, dedupe: bool | float | None
) -> float | None | Literal[False]:
    """``store(dedupe=...)`` as a rule: False, no deduplication; None, the same normalised
    text; a number, that too or a cosine at least that high."""
    if dedupe is None:
        threshold = config.dedupe_threshold
        return False if threshold is None else threshold
    if isinstance(dedupe, bool):
        return None if dedupe else False
    if not isinstance(dedupe, (int, float)) or not 0 < dedupe <= 1:
        raise MemoryValidationError("dedupe must be True, False, None or a number in (0, 1]")
    return float(dedupe)
