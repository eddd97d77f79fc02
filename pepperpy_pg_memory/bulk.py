"""The one connection-level step of ``store_many``: COPY a batch into the staging table and
merge it into the memory table, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from .access import record_accesses
from .dedupe import BatchDeduplication, lock_owners, reinforce
from .history import PLAIN, Change
from .items import PendingWrite
from .queries import PASSAGE_COLUMNS, STAGING_COLUMNS, Statements, record_identity
from .schema import STATEMENT_VERSIONS_SETTING, TableLayout
from .sql import Batch, Query, Session
from .types import Identity

__all__ = [
    "SMALL_BATCH_ROWS",
    "write_batch",
    "write_rows",
    "write_one",
    "write_superseding",
    "write_deduplicated",
    "copy_passages",
    "write_restored",
]


SMALL_BATCH_ROWS = 32
"""The most rows :func:`write_rows` writes in one statement; a larger batch is staged."""


async def write_batch(
    statements: Statements,
    tenant: str,
    records: Sequence[tuple[Any, ...]],
    rebuild_from: int,
    maintenance_work_mem: str,
    timeout: float,
    session: Session,
    *,
    every_row: bool = False,
    passages: Sequence[tuple[Any, ...]] = (),
    change: Change = PLAIN,
    dedupe: BatchDeduplication | None = None,
    quota: int | None = None,
) -> list[asyncpg.Record]:
    """Upsert ``records`` (in :data:`STAGING_COLUMNS` order); returns the rows the merge left
    without a vector (their text changed concurrently), or with ``every_row`` every merged
    row (its identity, moments and ``needs_embedding``). The memories' passages are replaced
    by ``passages`` (rows in :data:`PASSAGE_COLUMNS` order) in the same transaction; the
    history records ``change`` with each version. With ``dedupe``, writes that duplicate a
    memory the owner holds (or an earlier write of the batch) reinforce it instead;
    ``quota`` is the store's ``max_memories_per_owner``.

    The merge numbers and records its versions, computes its terms and checks the quota for
    all its rows at once (:meth:`Statements.merge_staging` with ``versions``) instead of
    leaving each row to the triggers, unless an owner has no room left: then the quota
    trigger evicts, row by row, as for any other writer.

    A few rows (at most :data:`SMALL_BATCH_ROWS`, with no deduplication and no rebuild) go
    in one statement instead (:func:`write_rows`): the staging table, the COPY and the merge
    cost about six round trips, which a burst of small batches pays on every batch.

    Inserting row by row into an HNSW graph is the slowest part of a write (about 1.5 ms a row
    at 384 dimensions); building the graph once over all rows is several times faster. So a
    batch of at least ``rebuild_from`` rows (0: never) that is larger than the table drops the
    index and rebuilds it in the same transaction: readers wait for the commit, and a failure
    rolls the index back with the rows. The GIN indexes (words, trigrams, terms, metadata)
    go the same way: at 10,000 rows inserting into them cost 0.5 s, building them 0.16 s.
    """
    layout = statements.layout
    rebuild = 0 < rebuild_from <= len(records)
    if dedupe is None and not rebuild and len(records) <= SMALL_BATCH_ROWS:
        rows: list[asyncpg.Record] = await write_rows(
            statements, tenant, records, timeout, session, passages=passages, change=change
        )
        return rows if every_row else [row for row in rows if row["needs_embedding"]]
    if rebuild:
        await session.execute(statements.take_rebuild_turn(), timeout=timeout)
        count = statements.count_up_to(len(records))
        rebuild = await session.fetchval(count, timeout=timeout) < len(records)
    async with session.transaction():
        await session.execute(statements.create_staging(), timeout=timeout)
        await session.copy_rows(
            statements.staging_name,
            records=records,
            columns=list(STAGING_COLUMNS),
            timeout=timeout,
        )
        if rebuild:
            # Rebuilding batches queue on the table's lock, taken before anything else of
            # the table: DROP INDEX takes it only after naming the index, and several batches
            # dropping and building it at once deadlocked. The first one to get it may have
            # made the table large enough that an index build no longer pays.
            await session.execute(Query(f"LOCK TABLE {statements.table} IN ACCESS EXCLUSIVE MODE"))
            count = statements.count_up_to(len(records))
            rebuild = await session.fetchval(count, timeout=timeout) < len(records)
        if dedupe is not None:
            # Before the index goes: a near-duplicate is found through it.
            folded = await dedupe.unstage_duplicates(session, timeout)
            passages = [row for row in passages if Identity(*row[1:4]) not in folded]
        rebuilt_gin: list[str] = []
        if rebuild:
            await session.execute(layout.drop_vector_index(), timeout=timeout)
            rebuilt_gin = await _drop_gin_indexes(layout, timeout, session)
        gone = statements.delete_staged_passages(tenant)
        await session.execute(gone, timeout=timeout)
        versions = statements.writes_versions and await _room_for(
            statements, tenant, records, quota, timeout, session, locked=dedupe is not None
        )
        merge = statements.merge_staging(tenant, every_row, change, versions=versions)
        if versions:
            rows = await _merge_with_versions(statements, merge, timeout, session)
        else:
            rows = await session.fetch(merge, timeout=timeout)
        await copy_passages(statements, passages, timeout, session)
        if rebuild:
            for query in layout.build_vector_index(maintenance_work_mem):
                await session.execute(query, timeout=timeout)
            for definition in rebuilt_gin:
                await session.execute(Query(definition), timeout=timeout)
        if dedupe is not None:
            await dedupe.reinforce(session, timeout)
    return rows


async def _drop_gin_indexes(layout: TableLayout, timeout: float, session: Session) -> list[str]:
    """Drop the table's GIN indexes (the caller holds the table's lock); returns the
    statements that build them again, as the server defined them."""
    listed = layout.gin_index_definitions()
    indexes = await session.fetch(listed, timeout=timeout)
    for index in indexes:
        # The name comes from the catalog, quoted there by format('%I').
        await session.execute(Query(f"DROP INDEX {index['name']}"), timeout=timeout)
    return [index["definition"] for index in indexes]


async def _room_for(
    statements: Statements,
    tenant: str,
    records: Sequence[tuple[Any, ...]],
    quota: int | None,
    timeout: float,
    session: Session,
    *,
    locked: bool,
) -> bool:
    """Whether every owner of the staged rows has room for its new memories under
    ``quota`` (always, without one). The owners' locks are taken first (unless ``locked``:
    deduplication took them) and held to the end of the transaction, as the quota trigger
    takes them."""
    if quota is None:
        return True
    if not locked:
        await lock_owners(tenant, [record_identity(record) for record in records], session)
    room = statements.quota_room(tenant, quota)
    return bool(await session.fetchval(room, timeout=timeout))


async def _merge_with_versions(
    statements: Statements, merge: Query, timeout: float, session: Session
) -> list[asyncpg.Record]:
    """Run a merge that records its own versions, with the row triggers standing aside for
    it alone (the setting is the transaction's, and set back before anything else runs)."""
    await session.execute(Query(f"SELECT set_config('{STATEMENT_VERSIONS_SETTING}', 'on', true)"))
    try:
        rows: list[asyncpg.Record] = await session.fetch(merge, timeout=timeout)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != f"{statements.layout.history_name}_pkey":
            raise
        # A version numbered from the statement's snapshot was recorded meanwhile: a delete
        # and a re-store of the memory committed while the merge ran (the version trigger
        # raises the same). The batch is retried whole, and numbers anew.
        raise asyncpg.SerializationError(
            "a memory of the batch was written by another transaction while the batch "
            "numbered its version"
        ) from exc
    await session.execute(Query(f"SELECT set_config('{STATEMENT_VERSIONS_SETTING}', '', true)"))
    return rows


async def write_rows(
    statements: Statements,
    tenant: str,
    records: Sequence[tuple[Any, ...]],
    timeout: float,
    session: Session,
    *,
    passages: Sequence[tuple[Any, ...]] = (),
    change: Change = PLAIN,
) -> list[asyncpg.Record]:
    """Upsert a few rows of distinct memories in one statement (two with passages, in one
    transaction): :func:`write_batch`'s path for small batches. Returns every merged row."""
    upsert = statements.upsert_rows(tenant, records, change)
    await _clear_passages(statements, tenant, [record_identity(r) for r in records], session)
    if not passages:
        rows: list[asyncpg.Record] = await session.fetch(upsert, timeout=timeout)
        return rows
    async with session.transaction():
        rows = await session.fetch(upsert, timeout=timeout)
        await copy_passages(statements, passages, timeout, session)
    return rows


async def _clear_passages(
    statements: Statements, tenant: str, identities: Sequence[Identity], session: Session
) -> None:
    """On a cluster, what one server's upsert statement does itself: delete the passages
    of the memories it replaces (see :meth:`Statements.clear_passages`)."""
    query = statements.clear_passages(tenant, identities)
    if query is not None:
        await session.execute(query)


async def copy_passages(
    statements: Statements,
    passages: Sequence[tuple[Any, ...]],
    timeout: float | None,
    session: Session,
) -> None:
    """Add passage rows (in :data:`PASSAGE_COLUMNS` order) of memories written just before."""
    if passages:
        layout = statements.layout
        await session.copy_rows(
            layout.passages_name,
            schema_name=layout.schema,
            records=passages,
            columns=list(PASSAGE_COLUMNS),
            timeout=timeout,
        )


async def write_one(
    statements: Statements,
    tenant: str,
    record: Sequence[Any],
    passages: Sequence[tuple[Any, ...]],
    session: Session,
    *,
    change: Change = PLAIN,
) -> asyncpg.Record:
    """Upsert one memory and replace its passages, in one transaction when it has any (each
    statement under the pool's command timeout)."""
    upsert = statements.upsert_one(tenant, record, change)
    await _clear_passages(statements, tenant, [record_identity(record)], session)
    row: asyncpg.Record | None
    if not passages:  # one statement: its passages (if it had any) go with it
        row = await session.fetchrow(upsert)
    else:
        async with session.transaction():
            row = await session.fetchrow(upsert)
            await copy_passages(statements, passages, None, session)
    assert row is not None
    return row


async def write_superseding(
    statements: Statements,
    tenant: str,
    old: Identity,
    write: PendingWrite,
    passages: Sequence[tuple[Any, ...]],
    closing: Change,
    session: Session,
) -> asyncpg.Record | None:
    """Replace the live, valid memory ``old`` by ``write`` in one transaction: the new fact
    is valid from this moment, and links to ``old``; if ``write`` is another memory, ``old``
    stops being valid at the same moment (a version recording ``closing``). None, changing
    nothing, if ``old`` is not live and valid."""
    async with session.transaction():
        lock = statements.lock_valid(tenant, old)
        state = await session.fetchrow(lock)
        if state is None:
            return None
        write.valid_from, write.supersedes = state["moment"], old.key
        if write.identity != old:
            close = statements.close_validity(tenant, old, state["moment"], write.key, closing)
            await session.execute(close)
        upsert = statements.upsert_one(tenant, write.record(), write.change)
        await _clear_passages(statements, tenant, [write.identity], session)
        row: asyncpg.Record | None = await session.fetchrow(upsert)
        await copy_passages(statements, passages, None, session)
    return row


async def write_deduplicated(
    statements: Statements,
    tenant: str,
    write: PendingWrite,
    threshold: float | None,
    passages: Sequence[tuple[Any, ...]],
    reinforcing: Change,
    session: Session,
) -> tuple[asyncpg.Record, bool]:
    """Write ``write`` unless its owner holds a memory it duplicates; then reinforce that
    one instead and record ``reinforcing``. One transaction, holding the owner's lock.
    Returns the row written or reinforced, and whether it was a duplicate."""
    async with session.transaction():
        await lock_owners(tenant, [write.identity], session)
        find = statements.find_duplicate(
            tenant, write.identity, write.text, write.embedding, threshold
        )
        duplicate = await session.fetchrow(find)
        if duplicate is not None:
            original = write.identity._replace(key=duplicate["key"])
            reinforced = await reinforce(statements, tenant, original, write, reinforcing, session)
            return reinforced, True
        upsert = statements.upsert_one(tenant, write.record(), write.change)
        await _clear_passages(statements, tenant, [write.identity], session)
        row = await session.fetchrow(upsert)
        await copy_passages(statements, passages, None, session)
    assert row is not None
    return row, False


async def write_restored(
    statements: Statements,
    tenant: str,
    restored: Batch,
    identities: Sequence[Identity],
    passages: Sequence[tuple[Any, ...]],
    reads: dict[Identity, tuple[int, datetime]],
    importing: Query | None,
    session: Session,
) -> None:
    """Write restored memories (``restored``: ``restore_one`` per memory, of the memories
    ``identities``) with their passages (only those) and read counts, in one
    transaction; ``importing`` marks it as an import whose versions come from the file."""
    async with session.transaction():
        if importing is not None:
            await session.execute(importing)
        await session.execute_batch(restored)
        gone = statements.delete_passages(tenant, list(identities))
        await session.execute(gone)
        await copy_passages(statements, passages, None, session)
        if reads:
            for counted in record_accesses(statements.layout, tenant, reads, restoring=True):
                await session.execute(counted)
