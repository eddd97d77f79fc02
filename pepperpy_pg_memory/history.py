"""Memory over time: the statements that read a memory's versions, trim them, and say why a
write happens.

The versions themselves are written by the table's triggers (see
:func:`~.schema.migrations._v8_history`), in the transaction of each change and whoever the
writer is. What a trigger cannot know — the operation when it is not a plain create, update
or delete, the actor and the reason — a statement tells it through transaction-local
settings, set by a one-row subquery the statement joins (:func:`change_context`): no extra
round trip, and gone when the transaction ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import MemoryValidationError
from .filters import Params
from .schema import (
    HISTORY_ACTOR_SETTING,
    HISTORY_OPERATION_SETTING,
    HISTORY_REASON_SETTING,
    IDENTITY_COLUMNS,
    RECORDING,
    VERSIONED_COLUMNS,
    TableLayout,
    same_memory,
    terms_function,
)
from .sql import Query
from .types import Identity

__all__ = [
    "AS_OF_SETTING",
    "AS_OF_MOMENT",
    "Change",
    "PLAIN",
    "HistoryStatements",
    "GONE_OPERATIONS",
    "OPERATIONS",
    "as_of_source",
    "replaced_versions",
    "recorded_from_merge",
    "change_context",
    "check_note",
    "change_of",
]

AS_OF_SETTING = "pepperpy.as_of"
"""Transaction setting naming the moment a read "as of" looks at (ISO 8601)."""
AS_OF_MOMENT = f"current_setting('{AS_OF_SETTING}')::timestamptz"

MAX_NOTE_CHARS = 1_000
"""The longest actor or reason recorded with a version."""


@dataclass(frozen=True)
class Change:
    """What a write records beside its versions: its ``operation`` (None: create, update or
    delete, as the statement did), who made it and why."""

    operation: str | None = None
    actor: str | None = None
    reason: str | None = None

    @property
    def said(self) -> bool:
        """Whether anything needs telling the triggers."""
        return self != PLAIN


PLAIN = Change()
"""A write that says nothing beyond what the statement does."""


def check_note(value: str | None, name: str) -> str | None:
    """An ``actor`` or ``reason`` as recorded (None or a non-empty string, no NUL)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise MemoryValidationError(f"{name} must be a non-empty string or None")
    if "\x00" in value or len(value) > MAX_NOTE_CHARS:
        raise MemoryValidationError(
            f"{name} must have no NUL character and at most {MAX_NOTE_CHARS:,} characters"
        )
    return value


def _settings_of(change: Change) -> tuple[tuple[str, str | None], ...]:
    return (
        (HISTORY_OPERATION_SETTING, change.operation),
        (HISTORY_ACTOR_SETTING, change.actor),
        (HISTORY_REASON_SETTING, change.reason),
    )


def setting_statement(name: str, value: str) -> str:
    """``SET LOCAL name = 'value'``: a setting Citus forwards to the workers (it forwards
    no set_config call). SET takes no bind parameter, so the value is quoted here:
    standard_conforming_strings (on since PostgreSQL 9.1) leaves backslashes alone, and
    quotes are doubled; a NUL cannot be sent at all."""
    if "\x00" in value:
        raise MemoryValidationError(f"{name} must have no NUL character")
    if not name.replace(".", "").replace("_", "").isalnum():
        raise ValueError(f"not a setting name: {name!r}")
    quoted = "'" + value.replace("'", "''") + "'"
    return f"SET LOCAL {name} = {quoted}"


def settings_query(settings: Mapping[str, str], distributed: bool) -> Query:
    """One statement putting ``settings`` (name → value) in force for the transaction: on
    one server ``set_config(…, true)`` with the values as bind parameters; on a cluster
    ``SET LOCAL``, the form Citus forwards to the workers a statement runs on."""
    if distributed:
        return Query("; ".join(setting_statement(name, value) for name, value in settings.items()))
    params = Params()
    calls = ", ".join(
        f"set_config({params.add(name)}, {params.add(value)}, true)"
        for name, value in settings.items()
    )
    return Query(f"SELECT {calls}", params.values)


def change_settings(change: Change) -> str:
    """:func:`change_context` as SET LOCAL statements (for a cluster: see
    :meth:`~.queries.Statements.announce`)."""
    return "; ".join(setting_statement(name, value or "") for name, value in _settings_of(change))


def change_context(params: Params, change: Change) -> str:
    """A one-row FROM item that tells the history triggers about ``change`` (every setting
    is set, so that an earlier statement's in the same transaction does not carry over)."""
    calls = ", ".join(
        f"set_config('{name}', coalesce({params.add(value)}::text, ''), true)"
        for name, value in _settings_of(change)
    )
    return f"(SELECT {calls}) AS history_context"


IMPORTED_COLUMNS = (*VERSIONED_COLUMNS, "operation", "actor", "reason", "at")
"""What an imported version gives, in the order :meth:`HistoryStatements.insert_version`
takes it."""

# A version whose operation ended the memory: reads as of a later moment do not see it.
GONE_OPERATIONS = ("delete", "expire")
OPERATIONS = frozenset(
    {"create", "update", "reinforce", "supersede", "invalidate", "restore", "promote", "evict"}
    | set(GONE_OPERATIONS)
)
"""Every operation a version may record (an imported history line names one of them)."""


def _version_columns(alias: str, recorded: bool = True, row: str | None = None) -> str:
    """A version's columns from ``alias``: a history row, or (``recorded=False``) a memory row
    standing for the version history lacks. With ``row`` (a FROM item ``m`` of the memory
    table and the condition that it is ``alias``'s memory), a history row's vector is,
    while it is the memory's current version, the memory row's: the history gets it only
    when the version is replaced."""
    columns = [
        f"coalesce({alias}.embedding, (SELECT m.embedding FROM {row} "
        f"AND m.version = {alias}.version)) AS embedding"
        if column == "embedding" and row is not None
        else f"{alias}.{column}"
        for column in VERSIONED_COLUMNS
        if column != "valid_from"
    ]
    columns.append(f"coalesce({alias}.valid_from, {alias}.created_at) AS valid_from")
    if recorded:
        columns += [f"{alias}.{column}" for column in ("operation", "actor", "reason", "at")]
    else:
        columns += ["'create'::text AS operation, NULL::text AS actor, NULL::text AS reason"]
        columns.append(f"{alias}.updated_at AS at")
    return ", ".join(columns)


def _same_memory(alias: str) -> str:
    """``alias``'s row is the memory named by parameters $1 (tenant) to $4 (key)."""
    return " AND ".join(f"{alias}.{column} = ${n}" for n, column in enumerate(IDENTITY_COLUMNS, 1))


def repeats_current_vector(history: str, memory: str) -> str:
    """SQL: the history row ``history`` records the current version of the memory row
    ``memory`` with a copy of its vector (as before schema version 27, or as an import
    writes it), which the row already keeps.

    ``replaced_at`` is asked of the history row itself: an UPDATE that waited for a writer
    replacing the memory rechecks the row it updates as the writer left it (replaced, the
    vector its only copy), but not the memory row it joined."""
    return (
        f"{same_memory(history, memory)} AND {history}.version = {memory}.version "
        f"AND {history}.replaced_at IS NULL AND {memory}.in_history "
        f"AND {history}.embedding = {memory}.embedding"
    )


class HistoryStatements:
    """The SQL over one memory table's history."""

    def __init__(self, layout: TableLayout) -> None:
        self.layout = layout
        self.history = layout.qualified_history
        self.table = layout.qualified_table

    def versions(self, tenant: str, identity: Identity, limit: int | None) -> Query:
        """The versions of one memory, newest first. A memory unchanged since before history
        was recorded (or written with history off) shows its live row as its newest."""
        params = Params([tenant, *identity])
        limit_clause = "" if limit is None else f"LIMIT {params.add(limit)}"
        return Query(
            f"SELECT * FROM ({self._recorded()} UNION ALL {self._unrecorded()}) v "
            f"ORDER BY v.version DESC {limit_clause}",
            params.values,
        )

    def version(self, tenant: str, identity: Identity, version: int) -> Query:
        """One version of one memory (as :meth:`versions` gives them)."""
        return Query(
            f"SELECT * FROM ({self._recorded()} UNION ALL {self._unrecorded()}) v "
            "WHERE v.version = $5",
            [tenant, *identity, version],
        )

    def gone(self, tenant: str, owner: tuple[str, str] | None, limit: int) -> Query:
        """The memories whose last version took them away (a delete, an expiry reclaimed, a
        quota eviction) and that were not stored again: that last version of each (it holds
        the memory as it was), the latest first."""
        params = Params([tenant])
        where = "h.tenant = $1"
        if owner is not None:
            where += (
                f" AND h.scope = {params.add(owner[0])} AND h.scope_id = {params.add(owner[1])}"
            )
        return Query(
            f"""
            SELECT * FROM (
                SELECT DISTINCT ON (h.scope, h.scope_id, h.key) {_version_columns("h")}
                FROM {self.history} h WHERE {where}
                ORDER BY h.scope, h.scope_id, h.key, h.version DESC
            ) v
            WHERE v.operation = ANY({params.add([*GONE_OPERATIONS, "evict"])}::text[])
              AND NOT EXISTS (SELECT 1 FROM {self.table} m WHERE m.tenant = $1
                              AND m.scope = v.scope AND m.scope_id = v.scope_id
                              AND m.key = v.key)
            ORDER BY v.at DESC, v.scope, v.scope_id, v.key LIMIT {params.add(limit)}
            """,
            params.values,
        )

    def _recorded(self) -> str:
        # The memory row named by the same parameters: on a cluster the look-up then stays on
        # the memory's node (Citus does not follow a correlation to it).
        row = f"{self.table} m WHERE {_same_memory('m')}"
        columns = _version_columns("h", row=row)
        return f"SELECT {columns} FROM {self.history} h WHERE {_same_memory('h')}"

    def _unrecorded(self) -> str:
        return (
            f"SELECT {_version_columns('m', recorded=False)} FROM {self.table} m "
            f"WHERE {_same_memory('m')} AND NOT m.in_history"
        )

    def owners_of(self, tenant: str, key: str) -> Query:
        """The owners holding ``key`` now or in their history (a deleted memory is found
        there), at most two."""
        return Query(
            f"SELECT scope, scope_id, key FROM {self.history} WHERE tenant = $1 AND key = $2 "
            f"UNION SELECT scope, scope_id, key FROM {self.table} WHERE tenant = $1 AND key = $2 "
            "LIMIT 2",
            [tenant, key],
        )

    def page(
        self,
        tenant: str,
        owner: tuple[str, str] | None,
        after: tuple[str, str, str, int] | None,
        limit: int,
    ) -> Query:
        """The next ``limit`` recorded versions (of one owner, if given) in identity and
        version order after ``after`` (a keyset page, for exports)."""
        params = Params([tenant])
        where = ["h.tenant = $1"]
        row = f"{self.table} m WHERE {same_memory('m', 'h')}"
        if owner is not None:
            scope, scope_id = params.add(owner[0]), params.add(owner[1])
            where.append(f"(h.scope, h.scope_id) = ({scope}, {scope_id})")
            # (Said as values too: on a cluster the look-up stays on the owner's node.)
            row += f" AND m.scope = {scope} AND m.scope_id = {scope_id}"
        if after is not None:
            bound = ", ".join(params.add(part) for part in after)
            where.append(f"(h.scope, h.scope_id, h.key, h.version) > ({bound})")
        return Query(
            f"SELECT {_version_columns('h', row=row)} FROM {self.history} h "
            f"WHERE {' AND '.join(where)} "
            f"ORDER BY h.scope, h.scope_id, h.key, h.version LIMIT {params.add(limit)}",
            params.values,
        )

    def insert_version(self) -> Query:
        """A template for ``executemany``: one imported version, in :data:`IMPORTED_COLUMNS`
        order (a version already recorded is kept)."""
        vector = self.layout.vector_column_type
        placeholders = ", ".join(
            f"${n}::{vector}" if column == "embedding" else f"${n}"
            for n, column in enumerate(IMPORTED_COLUMNS, 1)
        )
        return Query(
            f"INSERT INTO {self.history} ({', '.join(IMPORTED_COLUMNS)}) "
            f"VALUES ({placeholders}) ON CONFLICT DO NOTHING"
        )

    def recorded_here(self, tenant: str, identities: Sequence[Identity]) -> Query:
        """Per memory among ``identities`` that this table knows (a row or versions): its
        recorded versions' numbers and moments, and its row's ``updated_at`` (None: no
        row)."""
        scopes, scope_ids, keys = (list(column) for column in zip(*identities, strict=True))
        args: list[Any] = [tenant, scopes, scope_ids, keys]
        # Of one owner, said as a value too: on a cluster the look-up then runs on that
        # owner's node (Citus does not look into the arrays).
        pinned = {"m": "", "h": ""}
        if len(set(scope_ids)) == 1:
            args.append(scope_ids[0])
            pinned = {alias: f" AND {alias}.scope_id = $5" for alias in pinned}
        return Query(
            f"""
            WITH wanted AS (
                SELECT * FROM unnest($2::text[], $3::text[], $4::text[])
                    AS w(scope, scope_id, key))
            SELECT w.scope, w.scope_id, w.key,
                (SELECT m.updated_at FROM {self.table} m WHERE m.tenant = $1
                   AND m.scope = w.scope AND m.scope_id = w.scope_id AND m.key = w.key
                   {pinned["m"]}) AS updated_at,
                coalesce(recorded.versions, '{{}}') AS versions,
                coalesce(recorded.moments, '{{}}') AS moments
            FROM wanted w
            CROSS JOIN LATERAL (
                SELECT array_agg(h.version ORDER BY h.version) AS versions,
                       array_agg(h.at ORDER BY h.version) AS moments
                FROM {self.history} h WHERE h.tenant = $1 AND h.scope = w.scope
                  AND h.scope_id = w.scope_id AND h.key = w.key{pinned["h"]}) recorded
            """,
            args,
        )

    def after_import(self, tenant: str) -> list[Query]:
        """What an import that brought versions finishes with (in its importing
        transaction): when each version was replaced; the memory rows whose version is now
        recorded; and no copy of a memory's vector in its current version's record (an
        export gives the current version the row's vector; the history keeps it only once
        the version is replaced)."""
        same, recorded = same_memory("n", "h"), same_memory("h", "m")
        return [
            Query(
                f"UPDATE {self.history} h SET replaced_at = n.at FROM {self.history} n "
                f"WHERE h.tenant = $1 AND {same} AND n.version = h.version + 1 "
                "AND h.replaced_at IS NULL",
                [tenant],
            ),
            Query(
                f"UPDATE {self.table} m SET in_history = true WHERE m.tenant = $1 "
                f"AND NOT m.in_history AND EXISTS (SELECT 1 FROM {self.history} h "
                f"WHERE {recorded} AND h.version = m.version)",
                [tenant],
            ),
            Query(
                f"UPDATE {self.history} h SET embedding = NULL FROM {self.table} m "
                f"WHERE h.tenant = $1 AND {repeats_current_vector('h', 'm')}",
                [tenant],
            ),
        ]

    def forget_vectors(self, tenant: str, since: datetime | None = None) -> Query:
        """Drop the vectors of ``tenant``'s versions (another model's: never compared with
        the new model's; current versions read theirs from the re-embedded rows). With
        ``since`` (when a re-embedding began), only of versions recorded or replaced since:
        one replaced before the walk reached its row took the previous model's vector."""
        recent = "" if since is None else " AND (replaced_at >= $2 OR at >= $2)"
        return Query(
            f"UPDATE {self.history} SET embedding = NULL "
            f"WHERE tenant = $1 AND embedding IS NOT NULL{recent}",
            [tenant] if since is None else [tenant, since],
        )

    def trim_versions(self, tenant: str, keep: int) -> Query:
        """Delete all but the newest ``keep`` versions of each memory."""
        owner = ", ".join(IDENTITY_COLUMNS)
        same = same_memory("h", "l")
        return Query(
            f"DELETE FROM {self.history} h USING ("
            f"SELECT {owner}, max(version) AS latest FROM {self.history} "
            f"WHERE tenant = $1 GROUP BY {owner} HAVING count(*) > $2) l "
            f"WHERE {same} AND h.version <= l.latest - $2",
            [tenant, keep],
        )

    def trim_older_than(self, tenant: str, age: timedelta) -> Query:
        """Delete versions recorded more than ``age`` ago, never a memory's newest (it is
        what the memory is, or what it was when deleted)."""
        same = same_memory("n", "h")
        return Query(
            f"DELETE FROM {self.history} h WHERE h.tenant = $1 AND h.at < now() - $2::interval "
            f"AND EXISTS (SELECT 1 FROM {self.history} n WHERE {same} "
            "AND n.version > h.version)",
            [tenant, age],
        )

    def count(self, tenant: str) -> Query:
        return Query(f"SELECT count(*) FROM {self.history} WHERE tenant = $1", [tenant])


def recorded_from_merge(
    layout: TableLayout, merged: str, operation: str, actor: str, reason: str
) -> list[str]:
    """The data-modifying WITH items that record the versions a bulk merge wrote, as the
    row triggers would (see :func:`~.schema.migrations._v20_statement_versions`). ``merged``
    names a WITH item holding each merged row as ``new_row`` and the row it replaced (NULL
    for a new memory) as ``old_row``; ``operation``, ``actor`` and ``reason`` are the
    change's parameters.

    The new version's insert has no ON CONFLICT: its number was taken from the snapshot, and
    a version of that number recorded meanwhile (a delete and a re-store of the memory that
    both committed while the merge ran) fails it with a unique violation on the history's
    primary key, which the caller turns into a retry (see bulk.write_batch)."""
    history = layout.qualified_history
    columns = ", ".join(VERSIONED_COLUMNS)
    # As the row triggers record it: the new version without its vector (the memory row
    # holds it), which the version's row gets when it is replaced.
    new = ", ".join(
        "NULL" if column == "embedding" else f"(w.new_row).{column}" for column in VERSIONED_COLUMNS
    )
    old = ", ".join(f"(w.old_row).{column}" for column in VERSIONED_COLUMNS)
    identity = " AND ".join(f"h.{column} = (w.old_row).{column}" for column in IDENTITY_COLUMNS)
    replaced = "(w.old_row).version IS NOT NULL AND (w.new_row).version <> (w.old_row).version"
    return [
        # The version replaced says when, and takes its vector from the row it was (the
        # trigger's UPDATE of replaced_at).
        f"""replaced_versions AS (
            UPDATE {history} h SET replaced_at = (w.new_row).updated_at,
                embedding = coalesce(h.embedding, (w.old_row).embedding)
            FROM {merged} w
            WHERE {replaced} AND (w.old_row).in_history AND {identity}
              AND h.version = (w.old_row).version)""",
        # A replaced version the history lacks (written with history off, or before it).
        f"""unrecorded_versions AS (
            INSERT INTO {history} ({columns}, operation, at, replaced_at)
            SELECT {old}, CASE WHEN (w.old_row).version = 1 THEN 'create' ELSE 'update' END,
                   (w.old_row).updated_at, (w.new_row).updated_at
            FROM {merged} w WHERE {RECORDING} AND {replaced} AND NOT (w.old_row).in_history
            ON CONFLICT DO NOTHING)""",
        f"""new_versions AS (
            INSERT INTO {history} ({columns}, operation, actor, reason, at)
            SELECT {new}, coalesce({operation}, CASE WHEN (w.old_row).version IS NULL
                                               THEN 'create' ELSE 'update' END),
                   {actor}, {reason}, (w.new_row).updated_at
            FROM {merged} w
            WHERE {RECORDING}
              AND (w.new_row).version IS DISTINCT FROM (w.old_row).version)""",
    ]


def as_of_source(layout: TableLayout, moment: str) -> str:
    """A subquery shaped like the memory table holding each memory as it stood at
    ``moment`` (an SQL expression): the version then current, unless it was a deletion.

    A row of the table whose version was written by then is that version (had it been
    replaced since, its ``updated_at`` would be later): the table's own indexes serve that
    part. The rest are :func:`replaced_versions`.
    """
    live = ", ".join(f"m.{column}" for column in VERSIONED_COLUMNS)
    return f"""(
        SELECT {live}, m.updated_at, m.terms
        FROM {layout.qualified_table} m
        WHERE m.updated_at <= {moment}
        UNION ALL
        SELECT * FROM {replaced_versions(layout, moment)} replaced
    )"""


def replaced_versions(layout: TableLayout, moment: str) -> str:
    """A subquery shaped like the memory table: the versions current at ``moment`` that have
    been replaced since (current from their ``at`` until their ``replaced_at``), unless
    they were deletions. Usually few; found through the history's index on
    ``replaced_at``."""
    config = f"'{layout.text_search_config}'::regconfig"
    terms = terms_function(layout.schema)
    contextual = "h.indices @> ARRAY['contextual']"
    versioned = ", ".join(f"h.{column}" for column in VERSIONED_COLUMNS)
    gone = ", ".join(f"'{operation}'" for operation in GONE_OPERATIONS)
    return f"""(
        SELECT {versioned}, h.at AS updated_at,
            CASE WHEN {contextual} THEN {terms}({config}, h.content) END AS terms
        FROM {layout.qualified_history} h
        WHERE h.replaced_at > {moment} AND h.at <= {moment}
          AND h.operation NOT IN ({gone})
    )"""


def change_of(operation: str | None, actor: str | None, reason: str | None) -> Change:
    """What the history records with a write, its notes checked (see :func:`check_note`)."""
    return Change(operation, check_note(actor, "actor"), check_note(reason, "reason"))
