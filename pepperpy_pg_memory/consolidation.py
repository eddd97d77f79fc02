"""Consolidation: what an agent remembered over many turns, tidied per owner without losing
anything — memories read often become long-term, near-duplicates merge into the best of
them, and (given a summariser) each session's short-term memories become one episodic memory.

Every change is a version in the memories' history (``promote``; ``supersede`` with reason
"merged"), so a merge can be undone with ``restore``. Adapters' records (chat messages,
LangGraph items) are left alone unless the caller includes them. A run reaches a fixed point:
running it again changes nothing.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg

from .database import Database
from .dedupe import lock_owners
from .errors import MemoryValidationError
from .filters import Params
from .history import Change
from .models import ConsolidationReport
from .queries import Restriction, Statements, pinned_condition, select_entry
from .schema import (
    TableLayout,
    dedupe_identifiers_function,
    live,
    normalized_function,
    same_memory,
)
from .sql import Query, Session
from .types import (
    DOCUMENT_FIELD,
    MANAGED_FIELD,
    Identity,
    MemoryScope,
    MemoryType,
    ProgressCallback,
    Summarizer,
)

__all__ = [
    "ConsolidationReport",
    "ConsolidationStatements",
    "Consolidation",
    "Summarizer",
    "summary_text",
]

PROMOTABLE = (MemoryType.SHORT_TERM, MemoryType.WORKING, MemoryType.MEDIUM_TERM)
"""Types that expire on their own, and that enough reads make long-term."""
NEIGHBOURS = 10
"""Nearest memories examined per memory when looking for near-duplicates."""
MERGED = "merged"
"""The reason recorded on a memory merged into another."""
SUMMARY_PREFIX = "summary:"
SOURCES_FIELD = "sources"
"""The metadata field of a summary: the keys of the memories it sums up."""


def summary_text(entries: Sequence[Any]) -> str:
    """The prompt an ``ainvoke`` summariser gets: the memories, oldest first."""
    lines = "\n".join(f"- {entry.text}" for entry in entries)
    return (
        "Summarise these memories of one conversation in a few sentences, keeping every "
        f"fact, name, number and decision:\n{lines}"
    )


async def _summarise(summarize: Summarizer, entries: list[Any]) -> str:
    if hasattr(summarize, "ainvoke"):
        answer: Any = await summarize.ainvoke(summary_text(entries))
    elif callable(summarize):
        answer = summarize(entries)
        if inspect.isawaitable(answer):
            answer = await answer
    else:
        raise MemoryValidationError("summarize must be an async callable or have ainvoke()")
    content = getattr(answer, "content", answer)
    if isinstance(content, list):  # a message's content blocks
        content = "".join(
            part if isinstance(part, str) else str(part.get("text", ""))
            for part in content
            if isinstance(part, (str, dict))
        )
    if not isinstance(content, str) or not content.strip():
        raise MemoryValidationError("summarize returned no text")
    return content.strip()


class ConsolidationStatements:
    """The SQL consolidation runs on one memory table, one owner at a time."""

    def __init__(self, layout: TableLayout) -> None:
        self.layout = layout
        self.table = layout.qualified_table
        self.writes = Statements(layout)

    def _pinned(self, params: Params, tenant: str, owner: Identity) -> str:
        """For the read counts ``a`` looked up per memory: on a cluster, the owner as a value
        (see queries.pinned_condition)."""
        mine = Restriction(tenant=tenant, scope=MemoryScope(owner.scope), scope_id=owner.scope_id)
        return pinned_condition(self.layout, params, mine, "a")

    def _mine(
        self,
        params: Params,
        tenant: str,
        owner: Identity,
        managed: bool,
        alias: str,
        merging: bool = False,
    ) -> str:
        """The owner's live, valid memories (``alias`` names the row), adapters' records
        only if ``managed``; for ``merging``, summaries left out (a summary resembles the
        memories it sums up, which stay until they expire)."""
        conditions = [
            f"{alias}.tenant = {params.add(tenant)}",
            f"{alias}.scope = {params.add(owner.scope)}",
            f"{alias}.scope_id = {params.add(owner.scope_id)}",
            live(self.layout.refresh_check, alias),
            f"({alias}.valid_to IS NULL OR {alias}.valid_to > now())",
        ]
        if not managed:
            conditions.append(f"NOT {alias}.metadata ? '{MANAGED_FIELD}'")
        # A document's id must always name it: never merged, whatever include_managed says.
        conditions.append(f"NOT {alias}.metadata ? '{DOCUMENT_FIELD}'")
        if merging:
            conditions.append(f"NOT {alias}.metadata ? '{SOURCES_FIELD}'")
        return " AND ".join(conditions)

    def promote(
        self,
        tenant: str,
        owner: Identity,
        reads: int,
        managed: bool,
        change: Change,
        dry_run: bool,
    ) -> Query:
        """The owner's expiring memories read at least ``reads`` times made long-term, with
        no expiry (a version each); with ``dry_run`` only their keys."""
        params = Params()
        counted = (
            f"EXISTS (SELECT 1 FROM {self.layout.qualified_access} a "
            f"WHERE {same_memory('a', 'm')}{self._pinned(params, tenant, owner)} "
            f"AND a.access_count >= {params.add(reads)})"
        )
        where = (
            f"{self._mine(params, tenant, owner, managed, 'm')} AND {counted} "
            f"AND m.memory_type = ANY({params.add([t.value for t in PROMOTABLE])}::text[])"
        )
        if dry_run:
            return Query(f"SELECT m.key FROM {self.table} m WHERE {where}", params.values)
        writes = self.writes
        context = writes.context_of(params, change)
        sql = (
            f"UPDATE {self.table} m SET memory_type = '{MemoryType.LONG_TERM.value}', "
            f"expires_at = NULL, updated_at = {writes.clock} "
            f"{'FROM ' + context if context else ''} WHERE {where} RETURNING m.key"
        )
        return writes.announced(sql, params, change)

    def candidates(self, tenant: str, owner: Identity, managed: bool) -> Query:
        """The owner's memories in keeper order (most important, then most recently read or
        created), each with its text's hash and identifiers."""
        params = Params()
        schema = self.layout.schema
        recent = (
            f"coalesce((SELECT a.last_accessed_at FROM {self.layout.qualified_access} a "
            f"WHERE {same_memory('a', 'm')}{self._pinned(params, tenant, owner)}), m.created_at)"
        )
        return Query(
            f"""
            SELECT m.key, md5({normalized_function(schema)}(m.content)) AS text_hash,
                   {dedupe_identifiers_function(schema)}(m.content) AS identifiers
            FROM {self.table} m WHERE {self._mine(params, tenant, owner, managed, "m", True)}
            ORDER BY m.importance DESC, {recent} DESC, m.key
            """,
            params.values,
        )

    def neighbours(
        self,
        tenant: str,
        owner: Identity,
        threshold: float,
        managed: bool,
        excluded: Sequence[str],
    ) -> Query:
        """Pairs of the owner's memories at cosine ``threshold`` or closer, among each one's
        :data:`NEIGHBOURS` nearest (``excluded`` keys left out), found through the index (by
        the table's distance; the threshold is always a cosine)."""
        params = Params()
        gone = params.add(list(excluded))
        mine = self._mine(params, tenant, owner, managed, "m", merging=True)
        theirs = self._mine(params, tenant, owner, managed, "o", merging=True)
        least = params.add(threshold)
        sql = f"""
            SELECT m.key, near.key AS other FROM {self.table} m
            CROSS JOIN LATERAL (
                SELECT o.key, 1 - (o.embedding <=> m.embedding) AS similarity
                FROM {self.table} o
                WHERE {theirs} AND o.key <> m.key AND o.embedding IS NOT NULL
                  AND o.key <> ALL({gone}::text[])
                ORDER BY o.embedding {self.layout.distance_operator} m.embedding
                LIMIT {NEIGHBOURS}
            ) near
            WHERE {mine} AND m.embedding IS NOT NULL AND m.key <> ALL({gone}::text[])
              AND near.similarity >= {least}::float8
        """
        return Query(sql, params.values)

    def session_memories(self, tenant: str, owner: Identity, managed: bool) -> Query:
        """The session's short-term memories no summary covers yet, oldest first."""
        params = Params()
        covered = (
            f"SELECT 1 FROM {self.table} s WHERE {self._mine(params, tenant, owner, True, 's')} "
            f"AND s.memory_type = '{MemoryType.EPISODIC.value}' "
            f"AND jsonb_typeof(s.metadata -> '{SOURCES_FIELD}') = 'array' "
            f"AND s.metadata -> '{SOURCES_FIELD}' ? m.key"
        )
        entry = select_entry(self.layout, self._pinned(params, tenant, owner))
        sql = f"""
            SELECT {entry} FROM {self.table} m
            WHERE {self._mine(params, tenant, owner, managed, "m")}
              AND m.memory_type = '{MemoryType.SHORT_TERM.value}' AND NOT EXISTS ({covered})
            ORDER BY m.created_at, m.key
        """
        return Query(sql, params.values)


@dataclass
class Consolidation:
    """One consolidation run's settings and collaborators (see ``PostgresStorage.consolidate``)."""

    database: Database
    statements: Statements
    tenant: str
    promote_after: int
    merge_threshold: float
    include_managed: bool
    dry_run: bool
    actor: str | None
    entry: Callable[[asyncpg.Record], Any]
    """A row of :meth:`ConsolidationStatements.session_memories` as a ``MemoryEntry``."""
    write_summary: Callable[[Identity, str, list[Any]], Awaitable[str]]
    """Stores a summary under the given identity from its text and sources; its key."""

    def __post_init__(self) -> None:
        if not isinstance(self.promote_after, int) or self.promote_after < 1:
            raise MemoryValidationError("promote_after must be a positive integer")
        if not 0 < self.merge_threshold <= 1:
            raise MemoryValidationError("merge_threshold must be in (0, 1]")
        self.sql = ConsolidationStatements(self.statements.layout)

    async def run(
        self,
        restriction: Restriction,
        summarize: Summarizer | None,
        progress: ProgressCallback | None,
    ) -> ConsolidationReport:
        report = ConsolidationReport(dry_run=self.dry_run)
        rows = await self.database.fetch(
            "consolidate",
            self.statements.owners(restriction, exclude_managed=not self.include_managed),
        )
        owners = [Identity(row["scope"], row["scope_id"], "") for row in rows]
        for done, owner in enumerate(owners, start=1):
            await self.database.run("consolidate", partial(self._tidy, owner, report))
            if summarize is not None and owner.scope == MemoryScope.SESSION.value:
                await self._summarise(owner, summarize, report)
            report.owners = done
            if progress is not None:
                progress(done, len(owners))
        return report

    async def _tidy(self, owner: Identity, report: ConsolidationReport, session: Session) -> None:
        """Promote, then merge, one owner's memories: one transaction under the owner's lock
        (deduplicating writes and the quota wait; a concurrent run of the same owner too)."""
        promoted: list[str] = []
        merged: dict[str, str] = {}
        async with session.transaction():
            await lock_owners(self.tenant, [owner], session)
            reads = f"read at least {self.promote_after} times"
            promote = self.sql.promote(
                self.tenant,
                owner,
                self.promote_after,
                self.include_managed,
                Change("promote", self.actor, reads),
                self.dry_run,
            )
            promoted = [row["key"] for row in await session.fetch(promote)]
            merged = await self._merges(owner, session)
            if not self.dry_run:
                closing = Change("supersede", self.actor, MERGED)
                for key, keeper in merged.items():
                    close = self.statements.close_validity(
                        self.tenant, owner._replace(key=key), None, keeper, closing
                    )
                    await session.execute(close)
        # Reported once committed (a retried transaction reports once).
        report.promoted += promoted
        report.merged += list(merged)
        report.merged_into.update(merged)
        if promoted or merged:
            mine = report._owner(owner)
            mine.promoted += promoted
            mine.merged_into.update(merged)

    async def _merges(self, owner: Identity, session: Session) -> dict[str, str]:
        """Merged key → keeper key. In keeper order, a memory not yet merged keeps, and takes
        in its duplicates: the same text, or close vectors with the same identifiers. Its
        duplicates' own duplicates are not taken (no chains drifting from the keeper's
        meaning); the pass repeats over what is left until nothing merges."""
        query = self.sql.candidates(self.tenant, owner, self.include_managed)
        candidates = await session.fetch(query)
        order = {row["key"]: position for position, row in enumerate(candidates)}
        identifiers = {row["key"]: tuple(row["identifiers"] or ()) for row in candidates}
        merged: dict[str, str] = {}
        by_hash: dict[str, str] = {}
        for row in candidates:  # the same text: the first in keeper order keeps
            keeper = by_hash.setdefault(row["text_hash"], row["key"])
            if keeper != row["key"]:
                merged[row["key"]] = keeper
        while True:
            query = self.sql.neighbours(
                self.tenant, owner, self.merge_threshold, self.include_managed, list(merged)
            )
            pairs: dict[str, set[str]] = {}
            for row in await session.fetch(query):
                if identifiers.get(row["key"]) == identifiers.get(row["other"]):
                    pairs.setdefault(row["key"], set()).add(row["other"])
                    pairs.setdefault(row["other"], set()).add(row["key"])
            taken: dict[str, str] = {}
            kept: set[str] = set()
            for key in sorted(pairs, key=lambda k: order.get(k, len(order))):
                if key in taken:
                    continue
                kept.add(key)
                for other in pairs[key]:
                    if other not in kept and other not in taken:
                        taken[other] = key
            if not taken:
                return merged
            merged.update(taken)

    async def _summarise(
        self, owner: Identity, summarize: Summarizer, report: ConsolidationReport
    ) -> None:
        query = self.sql.session_memories(self.tenant, owner, self.include_managed)
        entries = [self.entry(row) for row in await self.database.fetch("consolidate", query)]
        if not entries:
            return
        sources = [entry.key for entry in entries]
        digest = hashlib.sha256("\n".join(sources).encode()).hexdigest()[:16]
        key = f"{SUMMARY_PREFIX}{digest}"
        if not self.dry_run:
            text = await _summarise(summarize, entries)
            key = await self.write_summary(owner._replace(key=key), text, entries)
        report.summarized += sources
        report.summaries.append(key)
        mine = report._owner(owner)
        mine.summarized += sources
        mine.summaries.append(key)
