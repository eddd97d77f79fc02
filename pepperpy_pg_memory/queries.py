"""The statements the store runs on its table for writes, reads, deletes and maintenance,
built apart from running them (search has its own module, :mod:`.search_sql`; DDL lives with
the schema).

Every builder returns a :class:`Query`; the store hands it to :class:`~.database.Database`, so
the SQL can be read and tested without a database. Values are always ``$n`` parameters; the
only names in the text are the table's, validated and quoted by
:mod:`pepperpy_pg_memory.identifiers`, and this module's own column names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .conversations import CONVERSATION_FIELD
from .filters import FieldKind, Params, compile_filter
from .history import (
    AS_OF_MOMENT,
    PLAIN,
    Change,
    as_of_source,
    change_context,
    change_settings,
    recorded_from_merge,
)
from .identifiers import quote_ident
from .schema import (
    RECORDING,
    STATEMENT_VERSIONS_VERSION,
    VERSION_CONTENT_COLUMNS,
    RefreshCheck,
    TableLayout,
    dedupe_identifiers_function,
    expired,
    expiry,
    live,
    normalized_function,
    refreshed,
    same_memory,
    terms_function,
)
from .sql import Query
from .types import (
    DOCUMENT_FIELD,
    MANAGED_FIELD,
    ArrayPattern,
    Identity,
    ListOrder,
    MemoryScope,
    MemoryType,
)

__all__ = [
    "Query",
    "Statements",
    "Restriction",
    "ArrayPattern",
    "STAGING_COLUMNS",
    "ENTRY_COLUMNS",
    "AS_STORED_COLUMNS",
    "CONTEXTUAL",
    "OWNER_KEY",
    "M_OWNER_KEY",
]

AS_STORED_COLUMNS = (
    "created_at",
    "updated_at",
    "expires_at",
    "version",
    "valid_from",
    "valid_to",
    "supersedes",
    "superseded_by",
    "importance",
    "access_count",
    "last_accessed_at",
)
"""Entry columns a MemoryEntry takes as they come (reads' and writes' rows give them all)."""
ENTRY_COLUMNS = (
    "key",
    "value",
    "content",
    "memory_type",
    "scope",
    "scope_id",
    "indices",
    "metadata",
    *AS_STORED_COLUMNS,
)


def _access_expressions(layout: TableLayout, pinned: str = "") -> dict[str, str]:
    """A memory row ``m``'s read counts, kept beside it (see access.py): a look-up per row.
    ``pinned`` is a condition on ``a`` to add (see :func:`select_entry`)."""
    counted = (
        f"FROM {layout.qualified_access} a WHERE a.tenant = m.tenant AND a.scope = m.scope "
        f"AND a.scope_id = m.scope_id AND a.key = m.key{pinned}"
    )
    return {
        "access_count": f"coalesce((SELECT a.access_count {counted}), 0) AS access_count",
        "last_accessed_at": f"(SELECT a.last_accessed_at {counted}) AS last_accessed_at",
    }


_UNREAD_COUNTS = {
    "access_count": "NULL::bigint AS access_count",
    "last_accessed_at": "NULL::timestamptz AS last_accessed_at",
}
NO_READ_COUNTS = ", ".join(_UNREAD_COUNTS.values())
"""The read-count columns of an entry whose counts were not read (its access_count None)."""


def select_entry(layout: TableLayout, pinned: str = "", *, read_counts: bool = True) -> str:
    """The select list of :data:`ENTRY_COLUMNS` from a memory row ``m``; ``pinned`` a
    condition on the read counts' row ``a`` to add (see :meth:`Statements.entry_for`).
    Without ``read_counts`` the counts are not looked up (NULL)."""
    counts = _access_expressions(layout, pinned) if read_counts else _UNREAD_COUNTS
    expressions = {
        # NULL means "since created" (rows from before validity was recorded have it).
        "valid_from": "coalesce(m.valid_from, m.created_at) AS valid_from",
        "expires_at": f"{expiry(layout.expiry_refreshes)} AS expires_at",
        **counts,
    }
    return ", ".join(expressions.get(column, f"m.{column}") for column in ENTRY_COLUMNS)


def pinned_condition(
    layout: TableLayout, params: Params, restriction: Restriction, alias: str
) -> str:
    """`` AND alias.<distribution column> = value`` when ``layout`` is distributed and
    ``restriction`` gives that column's value; "" otherwise."""
    if layout.distribution == "owner" and restriction.scope_id is not None:
        return f" AND {alias}.scope_id = {params.add(restriction.scope_id)}"
    if layout.distribution == "tenant":
        return f" AND {alias}.tenant = {params.add(restriction.tenant)}"
    return ""


def access_columns(layout: TableLayout) -> str:
    """The read counts of a memory row ``m`` (for a write's RETURNING)."""
    return ", ".join(_access_expressions(layout).values())


# What a write supplies, with its type in the staging table. This one list drives the staging
# table, the COPY, the record of a PendingWrite and both upserts' column and value lists.
# ("vector" stands for the table's embedding type.)
WRITE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "text"),
    ("value", "jsonb"),
    ("content", "text"),
    ("content_hash", "bytea"),
    ("memory_type", "text"),
    ("scope", "text"),
    ("scope_id", "text"),
    ("indices", "text[]"),
    ("metadata", "jsonb"),
    ("embedding", "vector"),
    ("ttl", "interval"),
    ("expires_at", "timestamptz"),
    ("valid_from", "timestamptz"),
    ("valid_to", "timestamptz"),
    ("supersedes", "text"),
    ("superseded_by", "text"),
    ("importance", "real"),
)
STAGING_COLUMNS = tuple(name for name, _ in WRITE_COLUMNS)
_SCOPE, _SCOPE_ID, _KEY = (STAGING_COLUMNS.index(name) for name in ("scope", "scope_id", "key"))


def record_identity(record: Sequence[Any]) -> Identity:
    """The memory a write's record (in :data:`STAGING_COLUMNS` order) names."""
    return Identity(record[_SCOPE], record[_SCOPE_ID], record[_KEY])


PASSAGE_COLUMNS = ("tenant", "scope", "scope_id", "key", "position", "content", "embedding")
"""A passage row, in the order of the COPY that writes them."""
# Written columns that are not the staged value itself: the expiry is the moment given, or now
# plus the time-to-live; the tenant is the store's.
_TABLE_VALUES = {"expires_at": "COALESCE({expires_at}, now() + {ttl})", "tenant": "{tenant}"}


# The old row, in an upsert: no longer true (validity closed). Storing its key again starts a
# new fact.
_CLOSED = "(m.valid_to IS NOT NULL AND m.valid_to <= {moment})"
_CLOSED_NOW = _CLOSED.format(moment="now()")
# The transaction's moment as a FROM item ``clock`` (for a RETURNING clause, where Citus
# allows no function that is not immutable).
_CLOCK = "(SELECT now() AS at) clock"
EXPIRING = Change(operation="expire")

# How rows of one statement's branches are matched to each other and to the table: by the
# whole identity, never by key alone (several owners may hold one key).
OWNER_KEY = "tenant, scope, scope_id, key"
M_OWNER_KEY = "m.tenant, m.scope, m.scope_id, m.key"
NEAR_DUPLICATE_CANDIDATES = 20
"""How many of an owner's memories nearest a write's vector deduplication judges (by cosine,
then identifiers): a near duplicate hides behind at most this many closer memories with other
identifiers."""
NEAR_DUPLICATE_SCAN_TUPLES = 1000
"""The most memories a deduplication check's HNSW walk reads (``hnsw.max_scan_tuples``)."""
REBUILD_LOCK_CLASS = 0x72656275  # "rebu"
"""First key of the ``pg_advisory_xact_lock(int, int)`` lock a batch that may rebuild a
table's indexes holds (the second: ``hashtext`` of the qualified table name) from before it
first reads the table. Inside a transaction (every operation is one on a Citus cluster) that
read holds the table's weakest lock to the end, and two batches upgrading theirs to LOCK
TABLE's deadlocked."""
EXACT_NEAR_DUPLICATE_OWNER = 1000
"""Up to this many memories, an owner's are all compared with a write for deduplication (a few
milliseconds); beyond it, the nearest are found through the HNSW index."""
_SEMANTIC = "m.indices @> ARRAY['semantic']"
CONTEXTUAL = "m.indices @> ARRAY['contextual']"

# What a write returns about each row it wrote (and select_entry's access columns).
_WRITTEN_COLUMNS = {
    **{name: f"m.{name}" for name in ("scope", "scope_id", "key", "created_at", "updated_at")},
    **{name: f"m.{name}" for name in ("expires_at", "version")},
    "valid_from": "coalesce(m.valid_from, m.created_at) AS valid_from",
    **{name: f"m.{name}" for name in ("valid_to", "supersedes", "superseded_by", "importance")},
    "needs_embedding": "(m.embedding IS NULL AND m.indices @> ARRAY['semantic']) "
    "AS needs_embedding",
}
_WRITTEN = ", ".join(_WRITTEN_COLUMNS.values())
# The columns a write returns by name: the above and the read counts.
_WRITTEN_NAMES = (*_WRITTEN_COLUMNS, "access_count", "last_accessed_at")


@dataclass(frozen=True)
class _VersionedMerge:
    """What an upsert that numbers its own versions adds (see Statements.merge_staging):
    ``inserted``, a new row's version, moment, history flag and terms (SQL by column);
    ``source``, joined to the written rows (``last_version``: the memory's last recorded
    version); ``operation``, the change's operation parameter."""

    inserted: Mapping[str, str]
    source: str
    operation: str
    # Each merged row and the row it replaced, for history.recorded_from_merge.
    returning: str = ", new AS new_row, old AS old_row"

    def updating(self, updates: Mapping[str, str]) -> dict[str, str]:
        """The SET clause ``updates`` of a memory written again, numbering its version as
        the version trigger does: the memory written as it stands (no named operation, same
        content) keeps its version and moment — a retried write changes nothing — and any
        other write is the next version."""
        old = ", ".join(f"m.{column}" for column in VERSION_CONTENT_COLUMNS)
        new = ", ".join(updates[column] for column in VERSION_CONTENT_COLUMNS)
        same = (
            f"({self.operation} IS NULL AND ({updates['created_at']}) = m.created_at "
            f"AND ROW({old}) IS NOT DISTINCT FROM ROW({new}))"
        )
        return {
            **updates,
            "updated_at": f"CASE WHEN {same} THEN m.updated_at ELSE {updates['updated_at']} END",
            "version": f"CASE WHEN {same} THEN m.version ELSE m.version + 1 END",
            "in_history": f"CASE WHEN {same} THEN m.in_history ELSE {RECORDING} END",
            "terms": "EXCLUDED.terms",
        }


_ORDER_COLUMNS: dict[str, str] = {
    "created_at": "m.created_at",
    "updated_at": "m.updated_at",
    "key": "m.key",
}
# Breaks ties between rows of equal order value: the rest of the identity.
_TIE_BREAK = ("m.key", "m.scope", "m.scope_id")


def _identity_arrays(identities: Sequence[Identity]) -> list[list[str]]:
    """Three parallel arrays (scopes, scope ids, keys) for ``unnest``."""
    return [
        [i.scope for i in identities],
        [i.scope_id for i in identities],
        [i.key for i in identities],
    ]


def _in_identities(params: Params, identities: Sequence[Identity]) -> str:
    scopes, scope_ids, keys = (params.add(a) for a in _identity_arrays(identities))
    # EXISTS rather than a row compared IN a subquery (the same semi-join on one server):
    # under row-level security Citus sends a DELETE of that shape to the workers with its
    # row lost ("subquery has too many columns").
    condition = (
        f"EXISTS (SELECT 1 FROM unnest({scopes}::text[], {scope_ids}::text[], "
        f"{keys}::text[]) AS named(scope, scope_id, key) WHERE named.scope = m.scope "
        "AND named.scope_id = m.scope_id AND named.key = m.key)"
    )
    owners = {identity.scope_id for identity in identities}
    if len(owners) == 1:
        # Said as a value too: on a cluster distributed by owner, the statement then runs
        # on that owner's node only (Citus does not look into the arrays).
        condition += f" AND m.scope_id = {params.add(owners.pop())}"
    return condition


@dataclass(frozen=True)
class Touch:
    """The refresh a read carries (see :meth:`Statements.values_by_owner`): a new expiry
    ``ttl`` from now for the memories it reads whose metadata matches the filter ``metadata``
    (all when None), chosen as :meth:`Statements.touch` chooses with ``slack``."""

    ttl: timedelta
    slack: float
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Restriction:
    """Which memories a read, search or delete may see. Every field narrows; None means any.

    ``tenant`` is always matched: a store acts for one tenant ('' when none is configured).
    """

    tenant: str = ""
    scope: MemoryScope | None = None
    scope_id: str | None = None
    types: frozenset[MemoryType] | None = None
    filter: Mapping[str, Any] | None = None
    value_filter: Mapping[str, Any] | None = None
    keys: frozenset[str] | None = None
    identities: frozenset[Identity] | None = None
    key_prefix: str | tuple[str, ...] | None = None
    """Keys starting with this, or with any of these."""
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    include_expired: bool = False
    include_invalid: bool = False
    """Also memories whose validity has closed (superseded or invalidated)."""
    as_of: datetime | None = None
    """Read the memories as they stood at this moment (the statement reads
    :meth:`~.schema.TableLayout.as_of_source`): expiry and validity are judged then."""
    indexed_metadata: tuple[tuple[tuple[str, ...], FieldKind], ...] = ()
    """Metadata paths with an expression index (their range filters take its form)."""

    def of_owner(self, scope: str, scope_id: str) -> Restriction:
        """This restriction narrowed to one owner (as stored: scope's value, scope_id)."""
        return replace(self, scope=MemoryScope(scope), scope_id=scope_id)

    @property
    def owner(self) -> tuple[str, str] | None:
        """The one owner (scope, scope_id) the memories must belong to, if there is one."""
        if self.scope is None or self.scope_id is None:
            return None
        return self.scope.value, self.scope_id

    def _any_refresh(self, params: Params, tenant: str, check: str | None) -> str | None:
        """SQL run once per statement (an InitPlan, and only when a row past its own expiry
        asks): whether the owner read (or the tenant) has any TTL refresh. Asking the refresh
        function costs ~28 µs a row in a search (its first call in a statement sets it up):
        an owner with 15 expired memories among 100 paid 0.4 ms on every search with no
        refresh to find."""
        if not isinstance(check, RefreshCheck):
            return None
        whose = [f"r.tenant = {tenant}"]
        if self.scope is not None:
            whose.append(f"r.scope = {params.add(self.scope.value)}")
        if self.scope_id is not None:
            whose.append(f"r.scope_id = {params.add(self.scope_id)}")
        return f"(SELECT EXISTS (SELECT 1 FROM {check.refreshes} r WHERE {' AND '.join(whose)}))"

    def conditions(self, params: Params, refresh_check: str | None) -> str:
        """SQL for a memory row ``m``: the restriction lets it through. ``refresh_check``
        says whether a TTL refresh extends an expiry (TableLayout.refresh_check)."""
        tenant = params.add(self.tenant)
        parts = [f"m.tenant = {tenant}"]
        moment = "now()" if self.as_of is None else f"{params.add(self.as_of)}::timestamptz"
        if not self.include_expired:
            any_refresh = self._any_refresh(params, tenant, refresh_check)
            parts.append(live(refresh_check, moment=moment, any_refresh=any_refresh))
        if not self.include_invalid:
            parts.append(f"(m.valid_to IS NULL OR m.valid_to > {moment})")
            if self.as_of is not None:
                parts.append(f"coalesce(m.valid_from, m.created_at) <= {moment}")
        if self.scope is not None:
            parts.append(f"m.scope = {params.add(self.scope.value)}")
        if self.scope_id is not None:
            parts.append(f"m.scope_id = {params.add(self.scope_id)}")
        if self.types is not None:
            parts.append(f"m.memory_type = ANY({params.add(sorted(t.value for t in self.types))})")
        if self.keys is not None:
            parts.append(f"m.key = ANY({params.add(sorted(self.keys))}::text[])")
        if self.identities is not None:
            parts.append(_in_identities(params, sorted(self.identities)))
        if isinstance(self.key_prefix, str):
            parts.append(f"starts_with(m.key, {params.add(self.key_prefix)})")
        elif self.key_prefix is not None:
            parts.append(f"m.key ^@ ANY({params.add(list(self.key_prefix))}::text[])")
        for column, operator, bound in (
            ("created_at", ">=", self.created_after),
            ("created_at", "<", self.created_before),
            ("updated_at", ">=", self.updated_after),
            ("updated_at", "<", self.updated_before),
        ):
            if bound is not None:
                parts.append(f"m.{column} {operator} {params.add(bound)}")
        if self.filter:
            parts.append(
                compile_filter(
                    self.filter, params, column="m.metadata", indexed=dict(self.indexed_metadata)
                )
            )
        if self.value_filter:
            parts.append(compile_filter(self.value_filter, params, column="m.value"))
        return " AND ".join(parts)


class Statements:
    """The SQL of one memory table."""

    def __init__(self, layout: TableLayout, *, as_of: bool = False) -> None:
        self.layout = layout
        self.table = layout.qualified_table
        self.entry = select_entry(layout)
        self.access_columns = access_columns(layout)
        if layout.distributed:
            # Citus runs no subquery in an INSERT's RETURNING: on a cluster a write's entry
            # does not carry the memory's read counts (reads do), and says so.
            self.access_columns = NO_READ_COUNTS
        if as_of:
            # Reads only: the table as it stood at the moment the transaction's AS_OF_SETTING
            # names (see Database.fetch_as_of).
            self.table = as_of_source(layout, AS_OF_MOMENT)
        self.registry = layout.registry
        self.vector = layout.vector_column_type
        self.staging = quote_ident(f"pepperpy_staging_{layout.table}_{int(layout.dimension)}")
        self.staging_name = self.staging.strip('"')
        self.passages = layout.qualified_passages
        self.distributed = layout.distributed
        self.refreshes = layout.expiry_refreshes
        self.refresh_check = layout.refresh_check
        self.live = live(self.refresh_check)
        """SQL: a memory row ``m`` has not expired."""
        # The moment an UPDATE records: the clock (so that of two updates of one memory the
        # later commit has the later moment), or on a cluster, where UPDATE may call no
        # volatile function, the statement's start.
        self.clock = "statement_timestamp()" if self.distributed else "clock_timestamp()"

    # --- writes --------------------------------------------------------------------------
    def _updates(self, given: tuple[str, str] | None = None) -> dict[str, str]:
        """The upsert's SET clause: each column an update of memory ``m`` writes, from the
        row proposed for insertion (``EXCLUDED``)."""
        # On a Citus cluster the SET clause may call no function that is not immutable: the
        # moment of the write comes from the inserted row (see _insert), evaluated once by
        # the coordinator.
        moment = "EXCLUDED.updated_at" if self.distributed else "now()"
        gone, closed = expired(self.refresh_check, moment), _CLOSED.format(moment=moment)
        # created_at survives an update unless the old row had expired: an expired memory is
        # gone, and storing its key again starts a new one. updated_at is the moment of the
        # write (clock_timestamp, not the transaction's start), so that of concurrent upserts
        # of one key, the one that committed last also has the latest updated_at. The
        # embedding is kept when the caller sent none because the text is unchanged (see
        # PostgresStorage._plan_embeddings).
        # A write makes the memory true again: over a closed fact it starts a new one.
        return {
            "value": "EXCLUDED.value",
            "content": "EXCLUDED.content",
            "content_hash": "EXCLUDED.content_hash",
            "memory_type": "EXCLUDED.memory_type",
            "indices": "EXCLUDED.indices",
            "metadata": "EXCLUDED.metadata",
            "embedding": """CASE
                    WHEN EXCLUDED.embedding IS NULL
                         AND EXCLUDED.indices @> ARRAY['semantic']
                         AND m.content_hash = EXCLUDED.content_hash
                    THEN m.embedding
                    ELSE EXCLUDED.embedding END""",
            **self._moments(moment, given),
            "expires_at": "EXCLUDED.expires_at",
            "valid_from": f"""CASE
                    WHEN EXCLUDED.valid_from IS NOT NULL THEN EXCLUDED.valid_from
                    WHEN {gone} THEN NULL
                    WHEN {closed} THEN {moment}
                    ELSE m.valid_from END""",
            "valid_to": "EXCLUDED.valid_to",
            "supersedes": f"""CASE WHEN {gone} OR {closed} THEN EXCLUDED.supersedes
                    ELSE coalesce(EXCLUDED.supersedes, m.supersedes) END""",
            "superseded_by": "EXCLUDED.superseded_by",
            "importance": "EXCLUDED.importance",
        }

    def _upsert_tail(self, updates: Mapping[str, str], returning: str = "") -> str:
        # The conflict target is the whole identity: a write never moves a memory to another
        # owner, and never touches a memory another owner holds under the same key.
        assignments = ",\n                ".join(f"{c} = {e}" for c, e in updates.items())
        return f"""
            ON CONFLICT ({OWNER_KEY}) DO UPDATE SET
                {assignments}
            RETURNING {_WRITTEN}, {self.access_columns}{returning}
        """

    def _moments(self, moment: str, given: tuple[str, str] | None) -> dict[str, str]:
        """The SET clause's moments. ``given``, for a restore: the parameters of the
        ``created_at`` and ``updated_at`` the backup recorded, written as they are; a line
        that recorded none is an ordinary write of the memory (so importing it again
        changes nothing)."""
        updated = "EXCLUDED.updated_at" if self.distributed else "clock_timestamp()"
        created = f"""CASE
                    WHEN {expired(self.refresh_check, moment)} THEN {moment}
                    ELSE m.created_at END"""
        if given is not None:
            created_given, updated_given = given
            created = (
                f"CASE WHEN {created_given} IS NULL THEN {created} ELSE EXCLUDED.created_at END"
            )
            updated = (
                f"CASE WHEN {updated_given} IS NULL THEN {updated} ELSE EXCLUDED.updated_at END"
            )
        return {"created_at": created, "updated_at": updated}

    def _staged_type(self, type_name: str) -> str:
        return self.vector if type_name == "vector" else type_name

    def _insert(
        self,
        values: Mapping[str, str],
        source: str,
        moments: Sequence[str] = (),
        context: str = "",
        given: tuple[str, str] | None = None,
        versions: _VersionedMerge | None = None,
    ) -> str:
        """``INSERT … SELECT``/``VALUES`` of every table column a write fills, each from
        ``values`` (a write column's name → its SQL), then the upsert. ``moments`` names
        ``created_at``/``updated_at`` when ``values`` gives them (a restore), and ``given``
        the parameters that say whether the caller gave each (see :meth:`_moments`);
        ``context`` is a :func:`~.history.change_context` to join. With ``versions``, the
        statement numbers its versions and computes its terms itself (see
        :meth:`merge_staging`)."""
        columns = [name for name in STAGING_COLUMNS if name not in ("ttl", "expires_at")]
        if self.distributed and not moments:
            # The write's moment, for the upsert's SET clause (see _upsert_tail): the
            # transaction's, as a new row's on one server (and as its expiry counts from).
            # (An update on one server takes the clock's instead, so that of two writers of
            # one memory the later commit has the later moment; Citus evaluates the moment
            # before the row is locked, so that order cannot hold on a cluster.)
            values = {**values, "created_at": "now()"}
            values["updated_at"] = "now()"
            moments = ("created_at", "updated_at")
        columns += [*_TABLE_VALUES, *moments]
        expressions = [
            _TABLE_VALUES[name].format(**values) if name in _TABLE_VALUES else values[name]
            for name in columns
        ]
        updates, returning = self._updates(given), ""
        if versions is not None:
            columns += versions.inserted
            expressions += versions.inserted.values()
            source += versions.source
            updates = versions.updating(updates)
            returning = versions.returning
        sources = [item for item in (source, context) if item]
        if sources:
            body = f"SELECT {', '.join(expressions)} FROM {', '.join(sources)}"
            if source:
                # Rows are written (and so locked) in the identity order every writer follows:
                # two batches over the same memories never wait for each other in a cycle.
                body += " ORDER BY " + ", ".join(
                    values[column] for column in ("scope", "scope_id", "key")
                )
        else:
            body = f"VALUES ({', '.join(expressions)})"
        tail = self._upsert_tail(updates, returning)
        return f"INSERT INTO {self.table} AS m ({', '.join(columns)}) {body} {tail}"

    def upsert_one(self, tenant: str, record: Sequence[Any], change: Change = PLAIN) -> Query:
        """One write, ``record`` in :data:`STAGING_COLUMNS` order. The memory's passages
        go in the same statement: a write replaces them (the caller adds the new ones)."""
        values = {
            name: f"${position}::{self._staged_type(type_name)}"
            for position, (name, type_name) in enumerate(WRITE_COLUMNS, start=1)
        }
        params = Params([*record, tenant])
        values["tenant"] = f"${len(params.values)}"
        owner = " AND ".join(
            f"p.{column} = {values[column]}" for column in ("tenant", "scope", "scope_id", "key")
        )
        context = self.context_of(params, change)
        insert = self._insert(values, source="", context=context)
        if self.distributed:  # the caller deletes the passages first (see clear_passages)
            return self.announced(insert, params, change)
        sql = f"""
            WITH old_passages AS (DELETE FROM {self.passages} p WHERE {owner})
            {insert}
        """
        return Query(sql, params.values)

    def upsert_rows(
        self, tenant: str, records: Sequence[Sequence[Any]], change: Change = PLAIN
    ) -> Query:
        """A few writes of distinct memories (``records`` in :data:`STAGING_COLUMNS` order) in
        one statement, without staging: their rows as VALUES, upserted in identity order, and
        their passages deleted in the same statement (the caller adds the new ones). Returns
        every merged row, as :meth:`merge_staging` with ``every_row`` does."""
        params = Params([tenant])
        rows = [
            "("
            + ", ".join(
                f"{params.add(value)}::{self._staged_type(type_name)}"
                for value, (_, type_name) in zip(record, WRITE_COLUMNS, strict=True)
            )
            + ")"
            for record in records
        ]
        names = ", ".join(name for name, _ in WRITE_COLUMNS)
        values = {name: f"s.{name}" for name in STAGING_COLUMNS}
        values["tenant"] = "$1"
        context = self.context_of(params, change)
        merge = self._insert(
            values, source=f"(VALUES {', '.join(rows)}) AS s({names})", context=context
        )
        if self.distributed:  # the caller deletes the passages first (see clear_passages)
            return self.announced(merge, params, change)
        gone = _in_identities(params, [record_identity(record) for record in records])
        sql = f"""
            WITH old_passages AS (DELETE FROM {self.passages} m WHERE m.tenant = $1 AND {gone}),
            merged AS ({merge})
            SELECT * FROM merged
        """
        return Query(sql, params.values)

    def entry_for(self, params: Params, restriction: Restriction) -> str:
        """:attr:`entry` for a read within ``restriction``. On a cluster, Citus runs a read on
        the one node holding its owner only if every table it reads is pinned to that owner
        by a value, and a look-up correlated with the row is not: the read counts' look-up
        names the owner (or tenant) itself."""
        pinned = pinned_condition(self.layout, params, restriction, "a")
        return select_entry(self.layout, pinned) if pinned else self.entry

    def context_of(self, params: Params, change: Change) -> str:
        """The FROM item that tells the history triggers about ``change`` (none if it says
        nothing). On a cluster the triggers fire on the worker, which never sees settings
        made by a function call: the statement's ``before`` says it (see :meth:`announced`)."""
        return change_context(params, change) if change.said and not self.distributed else ""

    def announced(self, sql: str, params: Params, change: Change) -> Query:
        """The statement ``sql`` that makes ``change``: on a cluster, run after the SET LOCAL
        statements that tell the history triggers about it (Citus forwards those to the
        workers: see distribution.SESSION_SETTINGS)."""
        before = change_settings(change) if self.distributed and change.said else ""
        return Query(sql, params.values, before)

    def clear_passages(self, tenant: str, identities: Sequence[Identity]) -> Query | None:
        """On a cluster, the passages of the memories a write replaces, deleted before it
        (Citus runs no data-modifying WITH in an INSERT); None on one server, where the
        upsert deletes them itself."""
        return self.delete_passages(tenant, identities) if self.distributed and identities else None

    def _from(self, params: Params, change: Change) -> str:
        context = self.context_of(params, change)
        return f"FROM {context} " if context else ""

    def delete_staged_passages(self, tenant: str) -> Query:
        """The passages of every staged memory (a batch write replaces them)."""
        return Query(
            f"DELETE FROM {self.passages} p USING {self.staging} s WHERE p.tenant = $1 "
            "AND p.scope = s.scope AND p.scope_id = s.scope_id AND p.key = s.key",
            [tenant],
        )

    def count_passages(self, tenant: str) -> Query:
        return Query(f"SELECT count(*) FROM {self.passages} WHERE tenant = $1", [tenant])

    def delete_passages(self, tenant: str, identities: Sequence[Identity]) -> Query:
        params = Params([tenant])
        return Query(
            f"DELETE FROM {self.passages} m "
            f"WHERE m.tenant = $1 AND {_in_identities(params, identities)}",
            params.values,
        )

    def passages_of(self, tenant: str, identities: Sequence[Identity]) -> Query:
        """The passage texts of ``identities``, in position order."""
        params = Params([tenant])
        return Query(
            f"SELECT m.scope, m.scope_id, m.key, array_agg(m.content ORDER BY m.position) "
            f"AS passages FROM {self.passages} m "
            f"WHERE m.tenant = $1 AND {_in_identities(params, identities)} "
            "GROUP BY m.scope, m.scope_id, m.key",
            params.values,
        )

    def passages_batch(self, tenant: str, after: tuple[Any, ...], batch: int) -> Query:
        """The next passages in identity and position order after ``after`` (keyset)."""
        return Query(
            f"SELECT scope, scope_id, key, position, content FROM {self.passages} "
            "WHERE tenant = $1 AND (scope, scope_id, key, position) > ($2, $3, $4, $5) "
            "ORDER BY scope, scope_id, key, position LIMIT $6",
            [tenant, *after, batch],
        )

    def set_passage_embeddings(self) -> Query:
        """A template for ``executemany``; per row: tenant, scope, scope_id, key, position,
        vector."""
        return Query(
            f"UPDATE {self.passages} SET embedding = $6::{self.vector} WHERE tenant = $1 "
            "AND scope = $2 AND scope_id = $3 AND key = $4 AND position = $5"
        )

    def restore_one(self, with_version: bool = False) -> Query:
        """A template for ``executemany``: one write as :meth:`upsert_one` takes it, then the
        tenant, ``created_at`` and ``updated_at`` to keep (None: now), and with
        ``with_version`` the version (an import bringing its history)."""
        values = {
            name: f"${position}::{self._staged_type(type_name)}"
            for position, (name, type_name) in enumerate(WRITE_COLUMNS, start=1)
        }
        count = len(WRITE_COLUMNS)
        values["tenant"] = f"${count + 1}"
        values["created_at"] = f"COALESCE(${count + 2}::timestamptz, now())"
        values["updated_at"] = f"COALESCE(${count + 3}::timestamptz, now())"
        moments: tuple[str, ...] = ("created_at", "updated_at")
        if with_version:
            values["version"] = f"COALESCE(${count + 4}::integer, 1)"
            moments += ("version",)
        given = (f"${count + 2}::timestamptz", f"${count + 3}::timestamptz")
        return Query(self._insert(values, source="", moments=moments, given=given))

    def create_staging(self) -> Query:
        # One temporary table per connection, emptied at each commit: COPY needs a target, and
        # re-creating it per batch would churn the catalog.
        columns = ", ".join(
            f"{name} {self._staged_type(type_name)}" for name, type_name in WRITE_COLUMNS
        )
        return Query(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.staging} ({columns}) ON COMMIT DELETE ROWS"
        )

    @property
    def writes_versions(self) -> bool:
        """Whether a bulk merge can number and record its own versions (see
        :meth:`merge_staging`): on one server, at a schema whose row triggers stand aside."""
        return not self.distributed and self.layout.version >= STATEMENT_VERSIONS_VERSION

    def merge_staging(
        self,
        tenant: str,
        every_row: bool = False,
        change: Change = PLAIN,
        *,
        versions: bool = False,
    ) -> Query:
        """The staged rows upserted; returns the identities left needing an embedding, or
        with ``every_row`` each merged row's identity, moments and ``needs_embedding``.

        With ``versions`` (see :attr:`writes_versions`) the statement does for all its rows
        what the row triggers do for one: numbers each version, records it (and closes the
        one it replaces) in the history, and computes the terms. It runs while
        STATEMENT_VERSIONS_SETTING is on, after the owners' quota was checked
        (:meth:`quota_room`)."""
        values = {name: f"s.{name}" for name in STAGING_COLUMNS}
        params = Params([tenant])
        values["tenant"] = "$1"
        if versions:
            return self._merge_with_versions(values, params, every_row, change)
        context = self.context_of(params, change)
        merge = self._insert(values, source=f"{self.staging} s", context=context)
        sql = f"""
            WITH merged AS ({merge})
            SELECT {"*" if every_row else "scope, scope_id, key"} FROM merged
            {"" if every_row else "WHERE needs_embedding"}
        """
        return self.announced(sql, params, change)

    def _merge_with_versions(
        self, values: dict[str, str], params: Params, every_row: bool, change: Change
    ) -> Query:
        operation, actor, reason = (
            f"{params.add(note)}::text" for note in (change.operation, change.actor, change.reason)
        )
        terms = terms_function(self.layout.schema)
        versions = _VersionedMerge(
            # A memory deleted and stored again continues its numbering; the write's moment
            # stays after the last version's (a delete committed since this transaction
            # began recorded a later one).
            source=f"""
                LEFT JOIN LATERAL (
                    SELECT h.version, h.at FROM {self.layout.qualified_history} h
                    WHERE h.tenant = {values["tenant"]} AND h.scope = {values["scope"]}
                      AND h.scope_id = {values["scope_id"]} AND h.key = {values["key"]}
                    ORDER BY h.version DESC LIMIT 1
                ) last_version ON true""",
            inserted={
                "version": "coalesce(last_version.version, 0) + 1",
                "updated_at": "CASE WHEN last_version.at >= now() THEN clock_timestamp() "
                "ELSE now() END",
                "in_history": RECORDING,
                "terms": f"CASE WHEN {values['indices']} @> ARRAY['contextual'] THEN "
                f"{terms}('{self.layout.text_search_config}'::regconfig, "
                f"{values['content']}) END",
            },
            operation=operation,
        )
        merge = self._insert(values, source=f"{self.staging} s", versions=versions)
        items = [
            f"merged AS ({merge})",
            *recorded_from_merge(self.layout, "merged", operation, actor, reason),
        ]
        written = ", ".join(_WRITTEN_NAMES) if every_row else "scope, scope_id, key"
        sql = f"""
            WITH {", ".join(items)}
            SELECT {written} FROM merged {"" if every_row else "WHERE needs_embedding"}
        """
        return Query(sql, params.values)

    def quota_room(self, tenant: str, quota: int) -> Query:
        """Whether every owner of the staged rows has room for the new memories among them
        under ``quota`` (one boolean). The caller holds the owners' locks, as the quota
        trigger does: the room then only shrinks by the caller's own writes."""
        params = Params([tenant, MANAGED_FIELD, quota])
        owner = "m.tenant = $1 AND m.scope = {0}.scope AND m.scope_id = {0}.scope_id".format
        counted = f"{self.live} AND NOT m.metadata ? $2"
        # As the quota trigger counts: first every row of the owner, from the primary key's
        # index alone (its visibility map set, as autovacuum leaves a table in use); only
        # when those leave no room, the live memories that are not adapters' records, each
        # read from the table (an owner of 20,000: 50 ms a batch, against a few).
        return Query(
            f"""
            WITH incoming AS (
                SELECT s.scope, s.scope_id, count(*) AS memories FROM {self.staging} s
                WHERE NOT s.metadata ? $2 AND NOT EXISTS (
                    SELECT 1 FROM {self.table} m
                    WHERE {owner("s")} AND m.key = s.key AND {counted})
                GROUP BY s.scope, s.scope_id
            )
            SELECT NOT EXISTS (
                SELECT 1 FROM incoming i
                WHERE CASE
                    WHEN i.memories + (SELECT count(*) FROM (
                        SELECT 1 FROM {self.table} m WHERE {owner("i")}
                        LIMIT $3) every_row) <= $3 THEN false
                    ELSE i.memories + (SELECT count(*) FROM (
                        SELECT 1 FROM {self.table} m WHERE {owner("i")} AND {counted}
                        LIMIT $3) held) > $3
                END
            )
            """,
            params.values,
        )

    def set_embeddings(self) -> Query:
        """A template for ``executemany``; per row: tenant, scope, scope_id, key, vector,
        content hash. (The memory's current version in the history gets the vector when
        it is replaced, from the row.)"""
        # Only if the text is still the one that was embedded: a concurrent writer that changed
        # it has written its own embedding.
        return Query(
            f"UPDATE {self.table} SET embedding = $5::{self.vector} "
            "WHERE tenant = $1 AND scope = $2 AND scope_id = $3 AND key = $4 "
            "AND content_hash = $6"
        )

    def touch(
        self,
        tenant: str,
        identities: Sequence[Identity],
        ttl: Any,
        slack: float = 0.0,
        metadata: Mapping[str, Any] | None = None,
    ) -> Query:
        """A new expiry ``ttl`` from now for the live memories ``identities`` name (those whose
        metadata matches the filter ``metadata``, when given), but for those whose expiry is
        already within ``slack`` × ``ttl`` of it. Its one value is how many were given one."""
        # A refresh is bookkeeping of a read: it never waits for a writer.
        params = Params([tenant, ttl])
        chosen = _in_identities(params, identities)
        if metadata:
            chosen += f" AND {compile_filter(metadata, params, column='m.metadata')}"
        stale = params.add(1 - slack) if slack > 0 else None
        owners = {identity.scope_id for identity in identities}
        # The memories updated, pinned to their owner as a value when there is one (on a
        # cluster the statement then runs on that owner's node alone).
        pinned = f"AND t.scope_id = {params.add(owners.pop())}" if len(owners) == 1 else ""
        if self.refreshes is None:
            return self._touch_rows(params, chosen, stale, pinned)
        current = "greatest(m.expires_at, refresh.expires_at)"
        due = f"AND (m.expires_at IS NULL OR {current} < now() + $2::interval * {stale})"
        chosen_memories = f"""
            SELECT {M_OWNER_KEY}, m.expires_at FROM {self.table} m
            LEFT JOIN {self.refreshes} refresh ON {same_memory("refresh", "m")}
                AND refresh.refreshed_from = m.expires_at
            WHERE m.tenant = $1 AND {chosen}
              AND (m.expires_at IS NULL OR {current} > now()) {due if stale else ""}"""
        return Query(
            f"""
            WITH chosen AS MATERIALIZED ({chosen_memories}),
            {self._extensions("$2", pinned)}
            SELECT (SELECT count(*) FROM extended) + (SELECT count(*) FROM rewritten)
            """,
            params.values,
        )

    def _extensions(self, ttl: str, pinned: str = "") -> str:
        """SQL: the CTEs ``extended`` and ``rewritten`` that give the memories of a CTE
        ``chosen`` (their identities and own ``expires_at``) a new expiry ``ttl`` from now,
        each returning the memory's identity and its new expiry.

        A memory's new expiry goes beside it (see schema.migrations._v23_expiry_refreshes):
        its row is neither written nor locked. Only a memory without an expiry (the refresh
        gives it one) or whose own expiry is later than the new one (a refresh with no slack
        sets the expiry, earlier or not) has its row rewritten, and is skipped if a writer
        holds it (the write sets its own expiry)."""
        assert self.refreshes is not None
        return f"""
            extended AS (
                INSERT INTO {self.refreshes} AS refresh ({OWNER_KEY}, refreshed_from, expires_at)
                SELECT c.tenant, c.scope, c.scope_id, c.key, c.expires_at, now() + {ttl}::interval
                FROM chosen c WHERE c.expires_at < now() + {ttl}::interval
                ORDER BY c.tenant, c.scope, c.scope_id, c.key
                ON CONFLICT ({OWNER_KEY}) DO UPDATE SET
                    refreshed_from = EXCLUDED.refreshed_from, expires_at = EXCLUDED.expires_at
                RETURNING refresh.tenant, refresh.scope, refresh.scope_id, refresh.key,
                    refresh.expires_at
            ), rewritten AS (
                UPDATE {self.table} t SET expires_at = now() + {ttl}::interval
                FROM (SELECT {M_OWNER_KEY} FROM {self.table} m JOIN chosen c
                      ON {same_memory("c", "m")}
                      WHERE c.expires_at IS NULL OR c.expires_at >= now() + {ttl}::interval
                      ORDER BY {M_OWNER_KEY} FOR NO KEY UPDATE OF m SKIP LOCKED) locked
                WHERE {same_memory("t", "locked")} {pinned}
                RETURNING t.tenant, t.scope, t.scope_id, t.key, t.expires_at
            )"""

    def _touch_rows(self, params: Params, chosen: str, stale: str | None, pinned: str) -> Query:
        """:meth:`touch` on a table that keeps no refreshes: each memory's row rewritten."""
        # Locked in the identity order every writer follows, so it can close no cycle of
        # waits; a memory being written is skipped (its write sets its own expiry). Rewriting
        # a row costs a new version of it (in place when its page has room, else in every
        # index, the HNSW graph's included): a memory refreshed a moment ago is left.
        if stale is not None:
            chosen += (
                f" AND (m.expires_at IS NULL OR m.expires_at < now() + $2::interval * {stale})"
            )
        return Query(
            f"""
            UPDATE {self.table} t SET expires_at = now() + $2::interval
            FROM (SELECT {M_OWNER_KEY} FROM {self.table} m
                  WHERE m.tenant = $1 AND {chosen} AND {self.live}
                  ORDER BY {M_OWNER_KEY} FOR NO KEY UPDATE SKIP LOCKED) locked
            WHERE t.tenant = $1 AND t.tenant = locked.tenant AND t.scope = locked.scope
              AND t.scope_id = locked.scope_id AND t.key = locked.key {pinned}
            """,
            params.values,
        )

    def _past_expiry(self, alias: str) -> str:
        """SQL: memory row ``alias`` has expired (said so that the BRIN index on
        ``expires_at`` can find such rows)."""
        own = f"{alias}.expires_at <= now()"
        if self.refresh_check is None:
            return own
        return f"{own} AND NOT {refreshed(self.refresh_check, alias, 'now()')}"

    def replaced_live(self, tenant: str, identities: Sequence[Identity]) -> Query:
        """The owners of ``identities`` that are live memories counted by the quota, one row
        each (a write over one takes no room)."""
        params = Params([tenant])
        return Query(
            f"SELECT m.scope, m.scope_id FROM {self.table} m "
            f"WHERE m.tenant = $1 AND {_in_identities(params, identities)} AND {self.live} "
            f"AND NOT m.metadata ? {params.add(MANAGED_FIELD)}",
            params.values,
        )

    def owners_held(self, tenant: str, owners: Sequence[tuple[str, str]]) -> Query:
        """How many live memories the quota counts, per owner among ``owners``."""
        params = Params([tenant, [o[0] for o in owners], [o[1] for o in owners]])
        return Query(
            f"SELECT m.scope, m.scope_id, count(*) AS held FROM {self.table} m "
            "WHERE m.tenant = $1 AND (m.scope, m.scope_id) IN "
            "(SELECT * FROM unnest($2::text[], $3::text[])) "
            f"AND {self.live} AND NOT m.metadata ? {params.add(MANAGED_FIELD)} "
            "GROUP BY m.scope, m.scope_id",
            params.values,
        )

    def memory_states(self, tenant: str, identities: Sequence[Identity]) -> Query:
        """A digest of each memory's state among ``identities`` (all it holds but its read
        counts): equal before and after a write means the write changed nothing."""
        params = Params([tenant])
        return Query(
            "SELECT m.scope, m.scope_id, m.key, md5(row(m.value, m.content, m.memory_type, "
            "m.indices, m.metadata, m.embedding, m.created_at, m.updated_at, m.expires_at, "
            "m.version, m.valid_from, m.valid_to, m.supersedes, m.superseded_by, "
            f"m.importance)::text) AS state FROM {self.table} m "
            f"WHERE m.tenant = $1 AND {_in_identities(params, identities)}",
            params.values,
        )

    def known_hashes(self, tenant: str, identities: Sequence[Identity]) -> Query:
        params = Params([tenant])
        return Query(
            f"SELECT m.scope, m.scope_id, m.key, m.content_hash FROM {self.table} m "
            f"WHERE m.tenant = $1 AND {_in_identities(params, identities)} "
            "AND m.embedding IS NOT NULL",
            params.values,
        )

    # --- reads -----------------------------------------------------------------------------
    def retrieve(self, key: str, restriction: Restriction, include_embedding: bool) -> Query:
        """The memories under ``key`` the restriction lets through: one row with an owner
        given; without one, up to two (two mean the key is ambiguous)."""
        params = Params([key])
        extra = ", m.embedding" if include_embedding else ""
        sql = (
            f"SELECT {self.entry_for(params, restriction)}{extra} FROM {self.table} m "
            f"WHERE m.key = $1 AND {restriction.conditions(params, self.refresh_check)} LIMIT 2"
        )
        return Query(sql, params.values)

    def _under_keys(
        self, columns: str | Callable[[Params], str], keys: list[str], restriction: Restriction
    ) -> Query:
        """``columns`` (or the columns made with the statement's parameters) of the memories
        under ``keys`` within the restriction."""
        if restriction.identities is None:
            params = Params([keys])
            under = "m.key = ANY($1::text[]) AND "
        else:
            # The identities name the keys already. Both as index conditions, a nested loop
            # over the identities sorted the whole key array again on every probe: 10,000
            # gets took 5 s instead of 0.2 s once the table's statistics made the planner
            # choose that loop.
            params, under = Params(), ""
        chosen = columns if isinstance(columns, str) else columns(params)
        where = restriction.conditions(params, self.refresh_check)
        sql = f"SELECT {chosen} FROM {self.table} m WHERE {under}{where}"
        return Query(sql, params.values)

    def owners_of(self, keys: list[str], restriction: Restriction) -> Query:
        """Every (scope, scope_id, key) holding one of ``keys`` within the restriction."""
        return self._under_keys("m.scope, m.scope_id, m.key", keys, restriction)

    def retrieve_many(self, keys: list[str], restriction: Restriction) -> Query:
        return self._under_keys(
            lambda params: self.entry_for(params, restriction), keys, restriction
        )

    def values_by_owner(
        self, keys: list[str], restriction: Restriction, touch: Touch | None = None
    ) -> Query:
        """The identity, value, metadata and moments of the memories under ``keys`` within
        the restriction (a read that builds no entry: no read counts, no indices); with
        ``touch``, those it names get a new expiry as :meth:`touch` gives one, in the same
        statement, and are read with it (only where refreshes are kept beside the rows:
        :attr:`touches_while_reading`)."""
        columns = (
            "m.scope, m.scope_id, m.key, m.value, m.metadata, m.created_at, m.updated_at, "
            f"{expiry(self.refreshes)} AS expires_at"
        )
        if touch is None:
            return self._under_keys(columns, keys, restriction)
        assert self.touches_while_reading

        read = self._under_keys(
            f"m.tenant, {columns}, m.expires_at AS own_expiry", keys, restriction
        )
        params = Params(list(read.args))
        ttl = params.add(touch.ttl)
        # Which of the memories read the refresh takes: as touch chooses them, judged by the
        # expiry the read found (its refresh looked up once).
        due = "TRUE"
        if touch.slack > 0:
            stale = params.add(1 - touch.slack)
            due = f"(f.own_expiry IS NULL OR f.expires_at < now() + {ttl}::interval * {stale})"
        if touch.metadata:
            due += f" AND {compile_filter(touch.metadata, params, column='f.metadata')}"
        return Query(
            f"""
            WITH found AS MATERIALIZED ({read.sql}),
            chosen AS (
                SELECT f.tenant, f.scope, f.scope_id, f.key, f.own_expiry AS expires_at
                FROM found f WHERE {due}
            ),
            {self._extensions(ttl)}
            SELECT f.scope, f.scope_id, f.key, f.value, f.metadata, f.created_at, f.updated_at,
                   coalesce(e.expires_at, r.expires_at, f.expires_at) AS expires_at
            FROM found f
            LEFT JOIN extended e ON {same_memory("e", "f")}
            LEFT JOIN rewritten r ON {same_memory("r", "f")}
            """,
            params.values,
        )

    @property
    def touches_while_reading(self) -> bool:
        """Whether :meth:`values_by_owner` can refresh what it reads in its own statement:
        where refreshes are kept beside the rows, on one server (Citus plans no write inside
        a read across shards)."""
        return self.refreshes is not None and not self.distributed

    def exists(self, key: str, restriction: Restriction) -> Query:
        """How many owners hold ``key`` within the restriction, counted no further than 2."""
        params = Params([key])
        sql = (
            f"SELECT count(*) FROM (SELECT 1 FROM {self.table} m "
            f"WHERE m.key = $1 AND {restriction.conditions(params, self.refresh_check)} "
            "LIMIT 2) AS found"
        )
        return Query(sql, params.values)

    def distinct_metadata(self, path: list[str], restriction: Restriction, limit: int) -> Query:
        params = Params()
        extracted = f"m.metadata #> {params.add(path)}::text[]"
        where = restriction.conditions(params, self.refresh_check)
        sql = (
            f"SELECT {extracted} AS value, count(*) AS memories FROM {self.table} m "
            f"WHERE {where} AND {extracted} IS NOT NULL "
            f"GROUP BY 1 ORDER BY 1 LIMIT {params.add(limit)}"
        )
        return Query(sql, params.values)

    def owners(
        self,
        restriction: Restriction,
        limit: int | None = None,
        after: tuple[str, str] | None = None,
        *,
        exclude_managed: bool = False,
    ) -> Query:
        """The owners (scope, scope_id) holding memories ``restriction`` admits, each with
        how many, in owner order: those after ``after``, at most ``limit`` (None: all). With
        ``exclude_managed``, adapters' own records (chat messages, …) do not count."""
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        if exclude_managed:
            where += f" AND NOT m.metadata ? {params.add(MANAGED_FIELD)}"
        if after is not None:
            scope, scope_id = params.add(after[0]), params.add(after[1])
            where += f" AND (m.scope, m.scope_id) > ({scope}, {scope_id})"
        sql = (
            f"SELECT m.scope, m.scope_id, count(*) AS memories FROM {self.table} m "
            f"WHERE {where} GROUP BY m.scope, m.scope_id ORDER BY m.scope, m.scope_id"
        )
        if limit is not None:
            sql += f" LIMIT {params.add(limit)}"
        return Query(sql, params.values)

    def distinct_arrays(
        self,
        path: list[str],
        restriction: Restriction,
        *,
        patterns: Sequence[ArrayPattern],
        depth: int | None,
        limit: int,
        offset: int,
    ) -> Query:
        """The distinct JSON arrays of strings at metadata ``path`` that match every pattern,
        cut to their first ``depth`` elements (then distinct again), in element-wise code
        point order, paged."""
        params = Params()
        extracted = f"m.metadata #> {params.add(path)}::text[]"
        where = restriction.conditions(params, self.refresh_check)
        # Conditions are evaluated in any order: the length must not be asked of a scalar.
        length = "(CASE WHEN jsonb_typeof(v) = 'array' THEN jsonb_array_length(v) END)"
        conditions = ["jsonb_typeof(v) = 'array'"]
        for pattern in patterns:
            size = len(pattern.labels)
            conditions.append(f"{length} >= {params.add(size)}::int")
            for position, label in enumerate(pattern.labels):
                if label is None:
                    continue
                index = (
                    f"{params.add(position)}::int"
                    if pattern.at == "start"
                    else f"{length} - {params.add(size - position)}::int"
                )
                conditions.append(f"(v ->> ({index})) = {params.add(label)}")
        value = "v"
        if depth is not None:
            value = (
                "(SELECT jsonb_agg(e ORDER BY i) FROM jsonb_array_elements(v) "
                f"WITH ORDINALITY AS t(e, i) WHERE i <= {params.add(depth)}::int)"
            )
        sql = f"""
            SELECT value FROM (
                SELECT DISTINCT {value} AS value
                FROM (SELECT {extracted} AS v FROM {self.table} m WHERE {where}) AS found
                WHERE {" AND ".join(conditions)}
            ) AS distinct_values
            ORDER BY ARRAY(SELECT e FROM jsonb_array_elements_text(value)
                           WITH ORDINALITY AS t(e, i) ORDER BY i) COLLATE "C"
            LIMIT {params.add(limit)} OFFSET {params.add(offset)}
        """
        return Query(sql, params.values)

    def count(self, restriction: Restriction) -> Query:
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        sql = f"SELECT count(*) FROM {self.table} m WHERE {where}"
        return Query(sql, params.values)

    def list_page(
        self,
        restriction: Restriction,
        *,
        limit: int,
        offset: int,
        order_by: ListOrder,
        descending: bool,
        after: tuple[Any, ...] | None = None,
    ) -> Query:
        """A page in ``order_by`` order, ties broken by the rest of the identity. ``after`` is
        the previous page's last row's position (its ``order_by`` value, then key, scope and
        scope_id; for ``key`` order just the last three)."""
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        direction = "DESC" if descending else "ASC"
        order = _ORDER_COLUMNS[order_by]
        columns = [order] + [column for column in _TIE_BREAK if column != order]
        if after is not None:
            if len(after) != len(columns):
                raise ValueError(f"a {order_by} position has {len(columns)} parts")
            bound = ", ".join(params.add(value) for value in after)
            where += f" AND ({', '.join(columns)}) {'<' if descending else '>'} ({bound})"
        sql = (
            f"SELECT {self.entry_for(params, restriction)} FROM {self.table} m WHERE {where} "
            f"ORDER BY {', '.join(f'{column} {direction}' for column in columns)} "
            f"LIMIT {params.add(limit)} OFFSET {params.add(offset)}"
        )
        return Query(sql, params.values)

    def turns_before(self, restriction: Restriction, position: int | None, count: int) -> Query:
        """The ``count`` conversation turns among the restriction's placed last before
        ``position`` (None: the last ones), the latest first: the context a turn written
        there is indexed with (see :mod:`.conversations`). The session's other turns stay
        in the database."""
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        path = params.add([CONVERSATION_FIELD, "position"])
        place = (
            f"CASE WHEN jsonb_typeof(m.metadata #> {path}::text[]) = 'number' "
            f"THEN (m.metadata #>> {path}::text[])::numeric END"
        )
        if position is not None:
            where += f" AND {place} < {params.add(position)}::numeric"
        sql = (
            f"SELECT {self.entry_for(params, restriction)} FROM {self.table} m WHERE {where} "
            f"AND {place} IS NOT NULL ORDER BY {place} DESC, m.key DESC "
            f"LIMIT {params.add(count)}"
        )
        return Query(sql, params.values)

    def scan_page(
        self,
        restriction: Restriction,
        after: Identity | None,
        limit: int,
        include_embedding: bool = False,
    ) -> Query:
        """The next ``limit`` memories in identity order after ``after`` (a keyset page: each
        page costs the same however far the scan has gone, unlike OFFSET)."""
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        if after is not None:
            bound = ", ".join(params.add(part) for part in after)
            where += f" AND (m.scope, m.scope_id, m.key) > ({bound})"
        extra = ", m.embedding" if include_embedding else ""
        sql = (
            f"SELECT {self.entry_for(params, restriction)}{extra} FROM {self.table} m "
            f"WHERE {where} ORDER BY m.scope, m.scope_id, m.key LIMIT {params.add(limit)}"
        )
        return Query(sql, params.values)

    # --- deletes ---------------------------------------------------------------------------
    def delete(self, key: str, restriction: Restriction, change: Change = PLAIN) -> Query:
        params = Params([key])
        # The moment comes from a FROM item: Citus allows no stable function in RETURNING.
        sources = ", ".join(filter(None, [self.context_of(params, change), _CLOCK]))
        sql = (
            f"DELETE FROM {self.table} m USING {sources} WHERE m.key = $1 "
            f"AND {restriction.conditions(params, self.refresh_check)} "
            f"RETURNING {live(self.refresh_check, moment='clock.at')} AS live"
        )
        return self.announced(sql, params, change)

    def delete_many(self, restriction: Restriction, change: Change = PLAIN) -> Query:
        params = Params()
        context = self.context_of(params, change)
        also = f", {context}" if context else ""
        # Rows are locked in the identity order every writer follows, before any is deleted.
        # (Joined rather than matched with IN, and pinned to the owner as a value: so Citus
        # runs it, on the owner's node.)
        sql = f"""
            DELETE FROM {self.table} d USING (
                SELECT {M_OWNER_KEY} FROM {self.table} m
                WHERE {restriction.conditions(params, self.refresh_check)}
                ORDER BY {M_OWNER_KEY} FOR UPDATE) x {also}
            WHERE {same_memory("d", "x")}{pinned_condition(self.layout, params, restriction, "d")}
        """
        return self.announced(sql, params, change)

    def delete_expired_batch(self, restriction: Restriction, batch: int) -> Query:
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        # Bounded batches with SKIP LOCKED: a sweep never holds many row locks at once and
        # never waits on a writer. Rows are named by their whole identity: another owner's
        # live memory under the same key is not expired and stays. Each becomes an "expire"
        # version in the history.
        # (Joined rather than matched with IN: Citus deparses a row IN a subquery wrongly.)
        context = self.context_of(params, EXPIRING)
        also = f", {context}" if context else ""
        sql = f"""
            DELETE FROM {self.table} d USING (
                SELECT {M_OWNER_KEY} FROM {self.table} m
                WHERE {self._past_expiry("m")} AND {where}
                LIMIT {params.add(batch)} FOR UPDATE SKIP LOCKED) x {also}
            WHERE {same_memory("d", "x")} AND {self._past_expiry("d")}
        """
        return self.announced(sql, params, EXPIRING)

    def delete_stale_refreshes(self, restriction: Restriction, batch: int) -> Query:
        """Up to ``batch`` TTL refreshes (of the restriction's tenant and owner) that keep no
        memory live any more: run out, or of a memory written or deleted since (its
        expiry is not the one refreshed). Never waits for a refresh being written."""
        assert self.refreshes is not None
        params = Params([restriction.tenant])
        whose = "refresh.tenant = $1"
        if restriction.scope is not None:
            whose += f" AND refresh.scope = {params.add(restriction.scope.value)}"
        if restriction.scope_id is not None:
            whose += f" AND refresh.scope_id = {params.add(restriction.scope_id)}"
        sql = f"""
            DELETE FROM {self.refreshes} d USING (
                SELECT {OWNER_KEY} FROM {self.refreshes} refresh
                WHERE {whose} AND (refresh.expires_at <= now() OR NOT EXISTS (
                    SELECT 1 FROM {self.table} m WHERE {same_memory("m", "refresh")}
                      AND m.expires_at = refresh.refreshed_from))
                ORDER BY {OWNER_KEY} LIMIT {params.add(batch)} FOR UPDATE SKIP LOCKED) x
            WHERE {same_memory("d", "x")}
        """
        return Query(sql, params.values)

    def clear_refreshes(self, tenant: str) -> Query:
        """Every TTL refresh of ``tenant``'s memories, deleted (locked in identity order, as
        refreshes are written)."""
        assert self.refreshes is not None
        return Query(
            f"""
            DELETE FROM {self.refreshes} d USING (
                SELECT {OWNER_KEY} FROM {self.refreshes} WHERE tenant = $1
                ORDER BY {OWNER_KEY} FOR UPDATE) x
            WHERE {same_memory("d", "x")}
            """,
            [tenant],
        )

    def matching_owners(self, restriction: Restriction, limit: int, expired: bool = False) -> Query:
        """Owners holding memories within ``restriction`` (``expired`` ones only), at most
        ``limit``: on a cluster a delete across owners goes owner by owner (Citus locks
        rows only in a statement that names the node's owner)."""
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        if expired:
            where = f"{self._past_expiry('m')} AND {where}"
        return Query(
            f"SELECT DISTINCT m.scope, m.scope_id FROM {self.table} m "
            f"WHERE {where} LIMIT {params.add(limit)}",
            params.values,
        )

    # --- deduplication ---------------------------------------------------------------------
    def _duplicate_of(self, write: Mapping[str, str], least: str | None) -> str:
        """A subquery: the owner's live, valid memory (under another key, not an adapter's
        record) that a write would duplicate — the same normalised text, or, with ``least``
        (a cosine) and a vector, one of the owner's NEAR_DUPLICATE_CANDIDATES memories
        nearest the write at least that close with the same identifiers and numbers; nothing
        when the write's own key is live (it updates that memory). ``write`` gives the SQL of
        the write's tenant, scope, scope_id, key, text and vector (and the hash of its
        normalised text, ``text_hash``, when the caller has it)."""
        normalized = normalized_function(self.layout.schema)
        whose = (
            f"m.tenant = {write['tenant']} AND m.scope = {write['scope']} "
            f"AND m.scope_id = {write['scope_id']}"
        )
        others = (
            f"m.key <> {write['key']} AND {self.live} AND NOT {_CLOSED_NOW} "
            f"AND NOT m.metadata ? '{MANAGED_FIELD}' AND NOT m.metadata ? '{DOCUMENT_FIELD}'"
        )
        owner = f"{whose} AND {others}"
        text_hash = write.get("text_hash") or f"md5({normalized}({write['text']}))"
        found = [
            f"""(SELECT m.key, 1.0::float8 AS similarity FROM {self.table} m
                WHERE {owner} AND md5({normalized}(m.content)) = {text_hash}
                LIMIT 1)"""
        ]
        if least is not None:
            found.append(self._near_duplicates(write, least, whose, others))
        own = (
            f"SELECT 1 FROM {self.table} o WHERE o.tenant = {write['tenant']} "
            f"AND o.scope = {write['scope']} AND o.scope_id = {write['scope_id']} "
            f"AND o.key = {write['key']} AND {live(self.refresh_check, 'o')}"
        )
        return (
            f"SELECT * FROM ({' UNION ALL '.join(found)}) candidates "
            f"WHERE NOT EXISTS ({own}) ORDER BY similarity DESC, key LIMIT 1"
        )

    def _near_duplicates(
        self, write: Mapping[str, str], least: str, whose: str, others: str
    ) -> str:
        """:meth:`_duplicate_of`'s near duplicates: of the owner's memories (``whose``,
        ``others``) nearest the write, those at least ``least`` close by cosine with the same
        identifiers (a few regular expressions, ~25 µs a text: read only for those)."""
        identifiers = dedupe_identifiers_function(self.layout.schema)
        probe = write["vector"]
        # The nearest first, then judged: the search stops early when nothing is close, the
        # common case. How they are found depends on the owner's size, which a batch's
        # statement cannot know when it is planned (it assumes an average owner), so each
        # write chooses as it runs, counting at most a little past the bound once (in the
        # primary key's order, so that the count reads that index: a plan that expects a
        # large owner otherwise scans the table for it).
        few = (
            f"SELECT c.scope, c.scope_id, c.key FROM {self.table} c "
            f"WHERE c.tenant = {write['tenant']} AND c.scope = {write['scope']} "
            f"AND c.scope_id = {write['scope_id']} "
            f"ORDER BY c.tenant, c.scope, c.scope_id, c.key LIMIT {EXACT_NEAR_DUPLICATE_OWNER + 1}"
        )
        gate = f"SELECT count(*) <= {EXACT_NEAR_DUPLICATE_OWNER} AS small FROM ({few}) few"
        usable = f"{others} AND m.embedding IS NOT NULL AND {probe} IS NOT NULL"
        # A small owner's memories are all compared, found by key (an order over a join,
        # which the graph index cannot give: a walk of the graph passes mostly other owners'
        # memories). A large owner's nearest come from the graph; its owner condition is
        # kept from the other indexes (IS TRUE), or a plan that expects an average owner
        # reads a large one whole and sorts it (20,000 memories: 20 ms a write). On a
        # cluster it stays plain: the worker's plan names one owner and knows its size.
        # The walk is cut short (pgvector's iterative scan would go on past other owners'
        # memories, up to 20,000, when the owner has few near the write: 200 ms a write for
        # an owner of 3,000 in a table of 103,000): a memory close enough to be a duplicate
        # is among the nearest the walk meets first. (Set for the rest of the transaction,
        # by the one-time filter before the scan starts, as search_sql._walk_wider does.)
        large_owner = whose if self.distributed else f"({whose}) IS TRUE"
        sources = (
            f"({few}) few JOIN {self.table} m ON m.tenant = {write['tenant']} "
            "AND m.scope = few.scope AND m.scope_id = few.scope_id AND m.key = few.key "
            f"WHERE {whose} AND {usable} AND size.small",
            f"{self.table} m WHERE {large_owner} AND {usable} AND NOT size.small "
            f"AND (SELECT set_config('hnsw.max_scan_tuples', "
            f"'{NEAR_DUPLICATE_SCAN_TUPLES}', true)) IS NOT NULL",
        )
        nearest = " UNION ALL ".join(
            f"(SELECT m.key, m.content, 1 - (m.embedding <=> {probe}) AS similarity "
            f"FROM {source} ORDER BY m.embedding {self.layout.distance_operator} {probe} "
            f"LIMIT {NEAR_DUPLICATE_CANDIDATES})"
            for source in sources
        )
        return f"""(SELECT near.key, near.similarity
            FROM ({gate}) size CROSS JOIN LATERAL ({nearest}) near
            WHERE near.similarity >= {least}::float8
              AND {identifiers}(near.content) = {identifiers}({write["text"]}))"""

    def find_duplicate(
        self, tenant: str, identity: Identity, text: str, vector: Any, threshold: float | None
    ) -> Query:
        """The memory a write of ``text`` under ``identity`` would duplicate (see
        :meth:`_duplicate_of`): its key and similarity."""
        params = Params([tenant, *identity, text])
        write = {"tenant": "$1", "scope": "$2", "scope_id": "$3", "key": "$4", "text": "$5"}
        least = None
        if threshold is not None and vector is not None:
            write["vector"] = f"{params.add(vector)}::{self.vector}"
            least = params.add(threshold)
        return Query(self._duplicate_of(write, least), params.values)

    def dedupe_identifiers(self, texts: Sequence[str]) -> Query:
        """Each text's identifiers (see :func:`~.schema.dedupe_identifiers_function`), a row
        each, in order: what tells a batch's close writes apart."""
        function = dedupe_identifiers_function(self.layout.schema)
        return Query(
            f"SELECT {function}(t) AS identifiers "
            "FROM unnest($1::text[]) WITH ORDINALITY AS given(t, n) ORDER BY n",
            [list(texts)],
        )

    def staged_duplicates(self, tenant: str, threshold: float | None) -> Query:
        """Per staged write: whether its own key is live, its text's normalised hash (to find
        repeats inside the batch), and the key of the owner's memory it duplicates, if any
        (see :meth:`_duplicate_of`)."""
        params = Params([tenant])
        write = {
            "tenant": "$1",
            **{name: f"s.{name}" for name in ("scope", "scope_id", "key")},
            "text": "s.content",
            "vector": "s.embedding",
            # The hash once a write, not once more in the look-up (the normalisation is a
            # regular expression, ~5 µs a text); OFFSET 0 below keeps the planner from
            # copying it back in.
            "text_hash": "h.text_hash",
        }
        least = None if threshold is None else params.add(threshold)
        schema = self.layout.schema
        normalized = normalized_function(schema)
        own = (
            f"EXISTS (SELECT 1 FROM {self.table} o WHERE o.tenant = $1 AND o.scope = s.scope "
            "AND o.scope_id = s.scope_id AND o.key = s.key "
            f"AND {live(self.refresh_check, 'o')})"
        )
        sql = f"""
            SELECT s.scope, s.scope_id, s.key, {own} AS own_live, h.text_hash,
                   d.key AS duplicate_key
            FROM {self.staging} s
            CROSS JOIN LATERAL (SELECT md5({normalized}(s.content)) AS text_hash OFFSET 0) h
            LEFT JOIN LATERAL ({self._duplicate_of(write, least)}) d ON true
        """
        return Query(sql, params.values)

    def write_duplicates(
        self, tenant: str, identity: Identity, text: str, vector: Any, threshold: float | None
    ) -> Query:
        """:meth:`staged_duplicates`' row for one write given as parameters: on a cluster,
        where the staging table (on the coordinator) cannot join the memories (on the
        workers), each write is looked up in a statement that names its owner."""
        params = Params([tenant, *identity, text])
        write = {"tenant": "$1", "scope": "$2", "scope_id": "$3", "key": "$4", "text": "$5"}
        least = None
        if threshold is not None:  # (a parameter no expression reads is refused)
            write["vector"] = f"{params.add(vector)}::{self.vector}"
            least = params.add(threshold)
        schema = self.layout.schema
        own = (
            f"EXISTS (SELECT 1 FROM {self.table} o WHERE o.tenant = $1 AND o.scope = $2 "
            "AND o.scope_id = $3 AND o.key = $4 "
            f"AND {live(self.refresh_check, 'o')})"
        )
        sql = f"""
            SELECT $2::text AS scope, $3::text AS scope_id, $4::text AS key, {own} AS own_live,
                   md5({normalized_function(schema)}($5)) AS text_hash,
                   (SELECT d.key FROM ({self._duplicate_of(write, least)}) d) AS duplicate_key
        """
        return Query(sql, params.values)

    def unstage(self, identities: Sequence[Identity]) -> Query:
        """Drop staged writes (duplicates folded into other memories)."""
        return Query(
            f"DELETE FROM {self.staging} s WHERE (s.scope, s.scope_id, s.key) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))",
            _identity_arrays(identities),
        )

    def reinforce(
        self,
        tenant: str,
        identity: Identity,
        importance: float,
        metadata: Mapping[str, Any],
        change: Change,
    ) -> Query:
        """A duplicate write's effect on the memory it duplicates: the larger importance,
        the metadata merged (the write's keys winning); a version."""
        params = Params([tenant, *identity, importance, metadata])
        sql = (
            f"UPDATE {self.table} m SET importance = greatest(m.importance, $5), "
            f"metadata = m.metadata || $6::jsonb, updated_at = {self.clock} "
            f"{self._from(params, change)}"
            "WHERE m.tenant = $1 AND m.scope = $2 AND m.scope_id = $3 AND m.key = $4 "
            f"RETURNING {self.entry}"
        )
        return self.announced(sql, params, change)

    # --- validity ----------------------------------------------------------------------------
    def lock_valid(self, tenant: str, identity: Identity) -> Query:
        """Lock the memory if it is live and valid; its row says the transaction's moment."""
        return Query(
            f"SELECT now() AS moment, coalesce(m.valid_from, m.created_at) AS valid_from "
            f"FROM {self.table} m WHERE m.tenant = $1 AND m.scope = $2 AND m.scope_id = $3 "
            f"AND m.key = $4 AND {self.live} AND NOT {_CLOSED_NOW} FOR UPDATE",
            [tenant, *identity],
        )

    def close_validity(
        self,
        tenant: str,
        identity: Identity,
        valid_to: datetime | None,
        superseded_by: str | None,
        change: Change,
    ) -> Query:
        """End a live, valid memory's validity at ``valid_to`` (None: now), not before it
        began; a new version."""
        params = Params([tenant, *identity, valid_to, superseded_by])
        # The moment comes from a FROM item: Citus allows no stable function in a CASE or
        # COALESCE of an UPDATE.
        end = "coalesce($5::timestamptz, clock.at)"
        sources = ", ".join(filter(None, [self.context_of(params, change), _CLOCK]))
        sql = (
            f"UPDATE {self.table} m SET valid_to = {end}, superseded_by = $6, "
            f"updated_at = {self.clock} FROM {sources} "
            f"WHERE m.tenant = $1 AND m.scope = $2 AND m.scope_id = $3 AND m.key = $4 "
            f"AND {self.live} AND NOT {_CLOSED_NOW} "
            f"AND coalesce(m.valid_from, m.created_at) <= {end} "
            f"RETURNING {self.entry}"
        )
        return self.announced(sql, params, change)

    def take_rebuild_turn(self) -> Query:
        """Wait for the other batches that may rebuild this table's indexes to end (the
        lock is held to the end of the transaction; see :data:`REBUILD_LOCK_CLASS`)."""
        return Query(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", [REBUILD_LOCK_CLASS, self.table]
        )

    def count_up_to(self, limit: int) -> Query:
        """Rows in the table, counted no further than ``limit`` (cheap on a large table)."""
        return Query(
            f"SELECT count(*) FROM (SELECT 1 FROM {self.table} LIMIT $1) AS bounded", [limit]
        )

    def counts_by_type(self, tenant: str) -> Query:
        """The memories :meth:`count` counts (live and valid), per type."""
        params = Params()
        where = Restriction(tenant=tenant).conditions(params, self.refresh_check)
        return Query(
            f"SELECT m.memory_type AS name, count(*) AS memories FROM {self.table} m "
            f"WHERE {where} GROUP BY m.memory_type ORDER BY m.memory_type",
            params.values,
        )

    def counts_by_owner(self, tenant: str, limit: int) -> Query:
        """The memories :meth:`count` counts (live and valid), per owner: the ``limit``
        largest owners."""
        params = Params()
        where = Restriction(tenant=tenant).conditions(params, self.refresh_check)
        return Query(
            f"SELECT m.scope, m.scope_id, count(*) AS memories FROM {self.table} m "
            f"WHERE {where} GROUP BY m.scope, m.scope_id "
            f"ORDER BY count(*) DESC, m.scope, m.scope_id LIMIT {params.add(limit)}",
            params.values,
        )

    def count_expired(self, tenant: str) -> Query:
        return Query(
            f"SELECT count(*) FROM {self.table} m WHERE m.tenant = $1 AND {self._past_expiry('m')}",
            [tenant],
        )

    # --- maintenance -----------------------------------------------------------------------
    def reindex_batch(self, tenant: str, after: Identity, batch: int) -> Query:
        """The next ``batch`` live semantic memories of ``tenant`` after ``after``, in the
        primary key's order."""
        return Query(
            "SELECT m.scope, m.scope_id, m.key, m.content, m.content_hash, "
            f"m.metadata -> $6::text AS conversation FROM {self.table} m "
            f"WHERE m.tenant = $1 AND {_SEMANTIC} AND {self.live} "
            "AND (m.scope, m.scope_id, m.key) > ($2, $3, $4) "
            "ORDER BY m.scope, m.scope_id, m.key LIMIT $5",
            [tenant, *after, batch, CONVERSATION_FIELD],
        )

    def count_semantic(self, tenant: str) -> Query:
        return Query(
            f"SELECT count(*) FROM {self.table} m WHERE m.tenant = $1 AND {_SEMANTIC} "
            f"AND {self.live}",
            [tenant],
        )

    def count_contextual(self, tenant: str) -> Query:
        return Query(
            f"SELECT count(*) FROM {self.table} m WHERE m.tenant = $1 AND {CONTEXTUAL}",
            [tenant],
        )

    def save_reindex_cursor(self, cursor: str | None) -> Query:
        return Query(
            f"UPDATE {self.registry} SET reindex_cursor = $2, updated_at = now() "
            "WHERE table_name = $1",
            [self.layout.table, cursor],
        )

    def load_reindex_cursor(self) -> Query:
        return Query(
            f"SELECT reindex_cursor FROM {self.registry} WHERE table_name = $1",
            [self.layout.table],
        )

    def record_dimension(self) -> Query:
        """Record this layout's vector dimension and type in the registry."""
        layout = self.layout
        return Query(
            f"UPDATE {self.registry} SET dimension = $2, vector_type = $3, updated_at = now() "
            "WHERE table_name = $1",
            [layout.table, layout.dimension, layout.vector_type],
        )

    def holds_vectors(self) -> Query:
        """Whether any memory or passage (of any tenant) has a vector."""
        return Query(
            f"SELECT EXISTS (SELECT 1 FROM {self.table} WHERE embedding IS NOT NULL) "
            f"OR EXISTS (SELECT 1 FROM {self.passages} WHERE embedding IS NOT NULL)"
        )

    def record_embedder(self) -> Query:
        """Record the identity of the model whose vectors the table now holds."""
        return Query(
            f"UPDATE {self.registry} SET embedder = $2, updated_at = now() WHERE table_name = $1",
            [self.layout.table, self.layout.embedder],
        )

    def record_text_search_config(self) -> Query:
        """Record this layout's text search configuration in the registry."""
        return Query(
            f"UPDATE {self.registry} SET text_search_config = $2, updated_at = now() "
            "WHERE table_name = $1",
            [self.layout.table, self.layout.text_search_config],
        )

    def index_sizes(self) -> Query:
        # On a cluster the coordinator's own relations are empty shells: Citus sums the
        # shards on the workers.
        size = "citus_relation_size" if self.distributed else "pg_relation_size"
        return Query(
            f"SELECT c.relname AS name, {size}(c.oid) AS bytes FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass "
            "ORDER BY c.relname",
            [self.layout.regclass],
        )

    def table_sizes(self) -> Query:
        total, heap = (
            ("citus_total_relation_size", "citus_table_size")
            if self.distributed
            else ("pg_total_relation_size", "pg_relation_size")
        )
        return Query(
            f"SELECT {total}($1::regclass) AS total, {heap}($1::regclass) AS heap",
            [self.layout.regclass],
        )
