"""Memory over time: the statements that read a memory's versions, trim them, and say why a
write happens.

The versions themselves are written by the table's triggers (see :func:`~.schema._v8_history`),
in the transaction of each change and whoever the writer is. What a trigger cannot know — the
operation when it is not a plain create, update or delete, the actor and the reason — a
statement tells it through transaction-local settings, set by a one-row subquery the statement
joins (:func:`change_context`): no extra round trip, and gone when the transaction ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from .errors import MemoryValidationError
from .filters import Params
from .schema import (
    HISTORY_ACTOR_SETTING,
    HISTORY_OPERATION_SETTING,
    HISTORY_REASON_SETTING,
    IDENTITY_COLUMNS,
    VERSIONED_COLUMNS,
    TableLayout,
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
    "as_of_source",
    "change_context",
    "check_note",
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


def change_context(params: Params, change: Change) -> str:
    """A one-row FROM item that tells the history triggers about ``change`` (every setting
    is set, so that an earlier statement's in the same transaction does not carry over)."""
    settings = (
        (HISTORY_OPERATION_SETTING, change.operation),
        (HISTORY_ACTOR_SETTING, change.actor),
        (HISTORY_REASON_SETTING, change.reason),
    )
    calls = ", ".join(
        f"set_config('{name}', coalesce({params.add(value)}::text, ''), true)"
        for name, value in settings
    )
    return f"(SELECT {calls}) AS history_context"


# A version whose operation ended the memory: reads as of a later moment do not see it.
GONE_OPERATIONS = ("delete", "expire")


def _version_columns(alias: str, recorded: bool = True) -> str:
    """A version's columns from ``alias``: a history row, or (``recorded=False``) a memory row
    standing for the version history lacks."""
    columns = [f"{alias}.{column}" for column in VERSIONED_COLUMNS if column != "valid_from"]
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

    def _recorded(self) -> str:
        return f"SELECT {_version_columns('h')} FROM {self.history} h WHERE {_same_memory('h')}"

    def _unrecorded(self) -> str:
        recorded = " AND ".join(f"h.{column} = m.{column}" for column in IDENTITY_COLUMNS)
        return (
            f"SELECT {_version_columns('m', recorded=False)} FROM {self.table} m "
            f"WHERE {_same_memory('m')} AND NOT EXISTS "
            f"(SELECT 1 FROM {self.history} h WHERE {recorded} AND h.version = m.version)"
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

    def trim_versions(self, tenant: str, keep: int) -> Query:
        """Delete all but the newest ``keep`` versions of each memory."""
        owner = ", ".join(IDENTITY_COLUMNS)
        same = " AND ".join(f"h.{column} = l.{column}" for column in IDENTITY_COLUMNS)
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
        same = " AND ".join(f"n.{column} = h.{column}" for column in IDENTITY_COLUMNS)
        return Query(
            f"DELETE FROM {self.history} h WHERE h.tenant = $1 AND h.at < now() - $2::interval "
            f"AND EXISTS (SELECT 1 FROM {self.history} n WHERE {same} "
            "AND n.version > h.version)",
            [tenant, age],
        )

    def count(self, tenant: str) -> Query:
        return Query(f"SELECT count(*) FROM {self.history} WHERE tenant = $1", [tenant])


def as_of_source(layout: TableLayout, moment: str) -> str:
    """A subquery shaped like the memory table holding each memory as it stood at
    ``moment`` (an SQL expression): the version then current, unless it was a deletion.

    A memory's next version is exactly ``version + 1`` (versions are gapless), so "then
    current" is one primary-key probe per version. A row unchanged since before history
    was recorded has no version: it is read from the table itself.
    """
    history, table = layout.qualified_history, layout.qualified_table
    config = f"'{layout.text_search_config}'::regconfig"
    terms = terms_function(layout.schema)
    contextual = "h.indices @> ARRAY['contextual']"
    versioned = ", ".join(f"h.{column}" for column in VERSIONED_COLUMNS)
    live = ", ".join(f"m.{column}" for column in VERSIONED_COLUMNS)
    next_version = " AND ".join(f"n.{column} = h.{column}" for column in IDENTITY_COLUMNS)
    recorded = " AND ".join(f"h.{column} = m.{column}" for column in IDENTITY_COLUMNS)
    gone = ", ".join(f"'{operation}'" for operation in GONE_OPERATIONS)
    return f"""(
        SELECT {versioned}, h.at AS updated_at,
            CASE WHEN {contextual} THEN to_tsvector({config}, h.content) END AS tsv,
            CASE WHEN {contextual}
                 THEN {terms}({config}, h.content) END AS terms
        FROM {history} h
        WHERE h.at <= {moment} AND h.operation NOT IN ({gone})
          AND NOT EXISTS (SELECT 1 FROM {history} n WHERE {next_version}
                          AND n.version = h.version + 1 AND n.at <= {moment})
        UNION ALL
        SELECT {live}, m.updated_at, m.tsv, m.terms
        FROM {table} m
        WHERE m.updated_at <= {moment}
          AND NOT EXISTS (SELECT 1 FROM {history} h WHERE {recorded} AND h.version = m.version)
    )"""
