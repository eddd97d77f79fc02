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

__all__ = ["BatchDeduplication", "lock_owners", "reinforce"]


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
        self.duplicates = self._decide(found)
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

    def _decide(self, found: dict[Identity, asyncpg.Record]) -> dict[Identity, Identity]:
        batch = {write.identity for write in self.writes}
        earlier = _KeptWrites(self.threshold)
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
    one": by owner and text hash, and (with a threshold) by owner and identifiers for
    near-duplicates: only texts with the same identifiers may match."""

    def __init__(self, threshold: float | None) -> None:
        self.threshold = threshold
        self._by_hash: dict[tuple[str, ...], Identity] = {}
        self._by_identifiers: dict[tuple[str, ...], _UnitRows] = {}

    @staticmethod
    def _groups(write: PendingWrite, row: asyncpg.Record) -> tuple[tuple[str, ...], ...]:
        owner = (write.scope.value, write.scope_id)
        return (*owner, row["text_hash"]), (*owner, *(row["identifiers"] or ()))

    def repeated_or_kept(self, write: PendingWrite, row: asyncpg.Record) -> Identity | None:
        """The earliest kept write with the same text, else the closest one at least the
        threshold close; or None, and ``write`` is kept."""
        by_hash, by_identifiers = self._groups(write, row)
        if by_hash in self._by_hash:
            return self._by_hash[by_hash]
        threshold = self.threshold
        unit = None if threshold is None else _unit(write.embedding)
        group = self._by_identifiers.get(by_identifiers)
        if threshold is not None and unit is not None and group is not None:
            similarity, closest = group.closest(unit)
            if similarity >= threshold:
                return closest
        self.keep(write, row, unit)
        return None

    def keep(self, write: PendingWrite, row: asyncpg.Record, unit: Any = None) -> None:
        """Note ``write`` as kept, whether or not it could repeat anything."""
        by_hash, by_identifiers = self._groups(write, row)
        self._by_hash.setdefault(by_hash, write.identity)
        if unit is None and self.threshold is not None:
            unit = _unit(write.embedding)
        if unit is not None:
            group = self._by_identifiers.get(by_identifiers)
            if group is None:
                group = self._by_identifiers[by_identifiers] = _UnitRows(unit)
            group.add(write.identity, unit)


def _unit(vector: Any) -> Any:
    if vector is None:
        return None
    array = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(array))
    return array / norm if norm else None
