"""Deduplication on write: a write that repeats what its owner already remembers reinforces
that memory instead of adding one (``store(dedupe=...)``, ``store_many(dedupe=...)``).

What counts as a duplicate is decided in SQL (:meth:`~.queries.Statements.find_duplicate`):
the same normalised text, or a cosine at least the threshold between texts that carry the same
identifiers and numbers. Writes of one owner that deduplicate hold a lock on that owner until
they commit, so concurrent duplicates find each other instead of both being added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import asyncpg
import numpy as np

from .access import record_accesses
from .history import Change
from .items import PendingWrite, verbatim
from .queries import Statements
from .schema import OWNER_LOCK_CLASS
from .sql import Query, Session
from .types import Identity

__all__ = ["BatchDeduplication", "close_in_batch", "lock_owners", "reinforce"]


def _owner_name(tenant: str, identity: Identity) -> str:
    return "\x1f".join((tenant, identity.scope, identity.scope_id))


_LOCK_OWNER = Query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
"""One owner's lock, held until the transaction ends (run once per owner)."""


async def lock_owners(tenant: str, identities: Iterable[Identity], session: Session) -> None:
    """Hold, until the transaction ends, the lock of each owner of ``identities`` (see
    :data:`~.schema.OWNER_LOCK_CLASS`), taken in one order by every caller so that two
    batches never deadlock."""
    owners = sorted({_owner_name(tenant, identity) for identity in identities})
    await session.execute_batch(_LOCK_OWNER.for_each((OWNER_LOCK_CLASS, owner) for owner in owners))


async def reinforce(
    statements: Statements,
    tenant: str,
    original: Identity,
    write: PendingWrite,
    change: Change,
    session: Session,
    timeout: float | None = None,
) -> asyncpg.Record:
    """``write``'s effect on the memory ``original`` it duplicates, recording ``change``:
    a read counted (first, so that the row returned shows it), then the memory reinforced."""
    read = {original: (1, datetime.now(timezone.utc))}
    for counted in record_accesses(statements.layout, tenant, read):
        await session.execute(counted, timeout=timeout)
    update = statements.reinforce(tenant, original, write.importance, write.metadata, change)
    row: asyncpg.Record | None = await session.fetchrow(update, timeout=timeout)
    assert row is not None
    return row


@dataclass
class BatchDeduplication:
    """The deduplication of one ``store_many`` batch, run inside its transaction: after the
    batch is staged, :meth:`unstage_duplicates` takes out the writes that duplicate a memory
    the owner holds or an earlier write of the batch; after the merge, :meth:`reinforce`
    reinforces what they duplicate, one ``reinforce`` version each."""

    statements: Statements
    tenant: str
    writes: Sequence[PendingWrite]
    """In batch order (a later write duplicates an earlier one, never the reverse)."""
    threshold: float | None
    reinforcing: Callable[[PendingWrite], Change]
    duplicates: dict[Identity, Identity] = field(default_factory=dict)
    """Each folded write's identity → the memory it reinforces."""

    async def unstage_duplicates(
        self, session: Session, timeout: float | None
    ) -> frozenset[Identity]:
        await lock_owners(self.tenant, [write.identity for write in self.writes], session)
        found = {
            Identity(row["scope"], row["scope_id"], row["key"]): row
            for row in await self._look_up(session, timeout)
        }
        identifiers = await self._identifiers(session, timeout)
        self.duplicates = self._decide(found, identifiers)
        if self.duplicates:
            unstage = self.statements.unstage(list(self.duplicates))
            await session.execute(unstage, timeout=timeout)
        return frozenset(self.duplicates)

    async def _look_up(self, session: Session, timeout: float | None) -> list[asyncpg.Record]:
        statements = self.statements
        if not statements.distributed:
            find = statements.staged_duplicates(self.tenant, self.threshold)
            rows: list[asyncpg.Record] = await session.fetch(find, timeout=timeout)
            return rows
        rows = []
        for write in self.writes:
            vector = write.embedding if self.threshold is not None else None
            find = statements.write_duplicates(
                self.tenant, write.identity, write.text, vector, self.threshold
            )
            row = await session.fetchrow(find, timeout=timeout)
            assert row is not None
            rows.append(row)
        return rows

    async def _identifiers(
        self, session: Session, timeout: float | None
    ) -> dict[Identity, tuple[str, ...]]:
        """The identifiers of the writes that may repeat another write of the batch by their
        vectors (see :func:`close_in_batch`); two such writes are duplicates only if these
        are equal. Read for those writes alone: ~50 µs a text in PostgreSQL, most of a
        batch's check when read for every write."""
        if self.threshold is None:
            return {}
        close = close_in_batch(self.writes, self.threshold)
        if not close:
            return {}
        read = self.statements.dedupe_identifiers([write.text for write in close])
        lists = await session.fetch(read, timeout=timeout)
        return {
            write.identity: tuple(row["identifiers"])
            for write, row in zip(close, lists, strict=True)
        }

    def _decide(
        self,
        found: dict[Identity, asyncpg.Record],
        identifiers: dict[Identity, tuple[str, ...]],
    ) -> dict[Identity, Identity]:
        batch = {write.identity for write in self.writes}
        earlier = _KeptWrites(self.threshold, identifiers)
        duplicates: dict[Identity, Identity] = {}
        for write in self.writes:
            row = found[write.identity]
            if verbatim(write.metadata):
                continue  # an adapter's record or document is kept verbatim, and repeats nothing
            original = None
            if row["duplicate_key"] is not None:
                candidate = write.identity._replace(key=row["duplicate_key"])
                # A memory this batch rewrites is judged by its new text, below.
                original = None if candidate in batch else candidate
            if original is None and row["own_live"]:
                earlier.keep(write, row)  # an update of its own memory repeats nothing
            elif original is None:
                original = earlier.repeated_or_kept(write, row)
            if original is not None:
                duplicates[write.identity] = original
        return duplicates

    async def reinforce(self, session: Session, timeout: float | None) -> None:
        by_identity = {write.identity: write for write in self.writes}
        for folded, original in self.duplicates.items():
            write = by_identity[folded]
            await reinforce(
                self.statements,
                self.tenant,
                original,
                write,
                self.reinforcing(write),
                session,
                timeout,
            )


class _UnitRows:
    """Unit vectors of one group of kept writes, as the rows of a matrix that grows by
    doubling: comparing a write against all of them is one product, and adding one copies
    nothing (rebuilding the matrix per write made large batches quadratic in copying)."""

    def __init__(self, first: Any) -> None:
        self.rows = np.empty((4, first.shape[0]), dtype=np.float64)
        self.identities: list[Identity] = []

    def add(self, identity: Identity, unit: Any) -> None:
        if len(self.identities) == self.rows.shape[0]:
            self.rows = np.concatenate([self.rows, np.empty_like(self.rows)])
        self.rows[len(self.identities)] = unit
        self.identities.append(identity)

    def closest(self, unit: Any) -> tuple[float, Identity]:
        similarities = self.rows[: len(self.identities)] @ unit
        best = int(np.argmax(similarities))  # the first of equals: the earliest write
        return float(similarities[best]), self.identities[best]


class _KeptWrites:
    """The writes of a batch kept so far, indexed to answer "does this one repeat an earlier
    one": by owner and text hash, and (with a threshold) by owner and identifiers for the
    writes with a close vector in the batch (``identifiers`` holds theirs): only texts with
    the same identifiers may match, and a write with no close vector matches none."""

    def __init__(
        self, threshold: float | None, identifiers: dict[Identity, tuple[str, ...]]
    ) -> None:
        self.threshold = threshold
        self.identifiers = identifiers
        self._by_hash: dict[tuple[str, ...], Identity] = {}
        self._by_identifiers: dict[tuple[str, ...], _UnitRows] = {}

    def _near_group(self, write: PendingWrite) -> tuple[str, ...] | None:
        listed = self.identifiers.get(write.identity)
        return None if listed is None else (write.scope.value, write.scope_id, *listed)

    def _same_text(self, write: PendingWrite, row: asyncpg.Record) -> tuple[str, ...]:
        return write.scope.value, write.scope_id, row["text_hash"]

    def repeated_or_kept(self, write: PendingWrite, row: asyncpg.Record) -> Identity | None:
        """The earliest kept write with the same text, else the closest one at least the
        threshold close; or None, and ``write`` is kept."""
        same_text = self._same_text(write, row)
        if same_text in self._by_hash:
            return self._by_hash[same_text]
        near = self._near_group(write)
        unit = None if near is None else _unit(write.embedding)
        group = None if near is None else self._by_identifiers.get(near)
        if self.threshold is not None and unit is not None and group is not None:
            similarity, closest = group.closest(unit)
            if similarity >= self.threshold:
                return closest
        self.keep(write, row, unit)
        return None

    def keep(self, write: PendingWrite, row: asyncpg.Record, unit: Any = None) -> None:
        """Note ``write`` as kept, whether or not it could repeat anything."""
        self._by_hash.setdefault(self._same_text(write, row), write.identity)
        near = self._near_group(write)
        if near is None:
            return
        if unit is None:
            unit = _unit(write.embedding)
        if unit is not None:
            group = self._by_identifiers.get(near)
            if group is None:
                group = self._by_identifiers[near] = _UnitRows(unit)
            group.add(write.identity, unit)


PAIRWISE_WRITES = 1_000
"""An owner's writes in one batch up to which :func:`close_in_batch` compares their vectors
all with all (a product of this many by this many, ~0.8 GFLOP at 384 dimensions); past it,
each has its identifiers read instead (~50 µs a text), as every write had before."""


def close_in_batch(writes: Sequence[PendingWrite], threshold: float) -> list[PendingWrite]:
    """The writes, in batch order, whose vector is at least ``threshold`` close by cosine to
    another write of the same owner's: the only ones that can repeat, or be repeated by,
    another write of the batch by their vectors (adapters' records repeat nothing). All of
    an owner's writes past :data:`PAIRWISE_WRITES`."""
    by_owner: dict[tuple[str, str], list[int]] = {}
    for position, write in enumerate(writes):
        if write.embedding is not None and not verbatim(write.metadata):
            by_owner.setdefault((write.scope.value, write.scope_id), []).append(position)
    close: set[int] = set()
    for positions in by_owner.values():
        if len(positions) > PAIRWISE_WRITES:
            close.update(positions)
            continue
        if len(positions) < 2:
            continue
        # One matrix per owner: normalising 10,000 vectors one call at a time cost 70 ms of
        # a 10,000-item batch.
        given: list[Any] = [writes[p].embedding for p in positions]
        vectors = np.stack(given).astype(np.float64)
        norms = np.linalg.norm(vectors, axis=1)
        nonzero = np.flatnonzero(norms)
        if len(nonzero) < 2:
            continue
        units = vectors[nonzero] / norms[nonzero, np.newaxis]
        similar = units @ units.T
        np.fill_diagonal(similar, -np.inf)
        # A margin for rounding: the decision is taken later, one product at a time.
        rows = np.flatnonzero((similar >= threshold - 1e-9).any(axis=1))
        close.update(positions[nonzero[row]] for row in rows)
    return [writes[position] for position in sorted(close)]


def _unit(vector: Any) -> Any:
    if vector is None:
        return None
    array = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(array))
    return array / norm if norm else None
