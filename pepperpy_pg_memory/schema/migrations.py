"""The memory table's migrations, in order: each a function of the table's layout returning
idempotent statements (the DDL, the PL/pgSQL of its triggers and functions), with the names
and settings it introduces. Append-only: never edit a released migration."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from ..errors import QUOTA_SQLSTATE
from ..identifiers import name_literal, qualified, quote_ident, quote_name, text_literal
from ..sql import Query
from ..types import MANAGED_FIELD
from .layout import (
    EXPIRY_REFRESHES_VERSION,
    GIN_PENDING_LIST_KB,
    HISTORY_VERSION,
    ROW_TRIGGERS_ON,
    TERMS_VERSION,
    TableLayout,
    terms_function,
)
from .registry import BACKFILLS, REGISTRY_TABLES


def _v1_table(layout: TableLayout) -> list[str]:
    t = layout.qualified_table
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {t} (
            key           text PRIMARY KEY,
            value         jsonb NOT NULL,
            content       text NOT NULL,
            content_hash  bytea NOT NULL,
            memory_type   text NOT NULL,
            scope         text NOT NULL,
            scope_id      text NOT NULL,
            indices       text[] NOT NULL,
            metadata      jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            embedding     {layout.vector_column_type},
            tsv           tsvector GENERATED ALWAYS AS ({layout.tsvector_expression()}) STORED,
            created_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now(),
            expires_at    timestamptz,
            CONSTRAINT {layout.index_name("metadata_object")}
                CHECK (jsonb_typeof(metadata) = 'object')
        )
        """,
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('scope_idx')} "
        f"ON {t} (scope, scope_id, memory_type)",
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('expires_idx')} "
        f"ON {t} (expires_at) WHERE expires_at IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('updated_idx')} ON {t} (updated_at)",
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('metadata_idx')} "
        f"ON {t} USING gin (metadata jsonb_path_ops)",
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('tsv_idx')} ON {t} USING gin (tsv)",
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('trgm_idx')} "
        f"ON {t} USING gin (content gin_trgm_ops)",
        layout.hnsw_index_statement(),
    ]


def _v2_small_gin_pending_lists(layout: TableLayout) -> list[str]:
    # GIN defers inserts to a pending list that every search must scan in full until it is
    # merged; at the default 4 MB a freshly written table searched 4x slower. 256 kB keeps
    # the merge work small and frequent.
    return [
        f"ALTER INDEX {layout.qualified_index(suffix)} "
        f"SET (gin_pending_list_limit = {GIN_PENDING_LIST_KB})"
        for suffix in ("tsv_idx", "trgm_idx", "metadata_idx")
    ]


TENANT_SETTING = "pepperpy.tenant"


def _v3_tenant_column(layout: TableLayout) -> list[str]:
    # Every row records the tenant of the session that wrote it (the pepperpy.tenant setting,
    # '' when unset), so that row-level security can be switched on at any time later.
    return [
        f"ALTER TABLE {layout.qualified_table} ADD COLUMN IF NOT EXISTS tenant text NOT NULL "
        f"DEFAULT coalesce(current_setting('{TENANT_SETTING}', true), '')",
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('tenant_idx')} "
        f"ON {layout.qualified_table} (tenant)",
    ]


TENANT_POLICY = "tenant_binding"
"""The policy's name: a release that changes the policy gives it a new one (see
_row_level_security_in_place)."""
_OLD_POLICIES = ("tenant_isolation",)
"""Earlier releases' policies, dropped when ours is created ("tenant_isolation" trusted the
pepperpy.tenant setting alone)."""


def tenant_tables(layout: TableLayout) -> list[str]:
    """The unquoted names of the tables whose rows carry a tenant, at the layout's version:
    those row-level security covers."""
    names = [layout.table]
    if layout.version >= PASSAGES_VERSION:
        names.append(layout.passages_name)
    if layout.version >= TERMS_VERSION:
        names += [layout.term_stats_name, layout.term_totals_name]
    if layout.version >= HISTORY_VERSION:
        names.append(layout.history_name)
    if layout.version >= ACCESS_VERSION:
        names.append(layout.access_name)
    if layout.version >= OWNER_TERMS_VERSION:
        names += [layout.owner_terms_name, layout.owner_totals_name]
    if layout.version >= BACKFILLS_PER_TABLE_VERSION:
        names.append(layout.backfills_name)
    if layout.version >= EXPIRY_REFRESHES_VERSION:
        names.append(layout.refreshes_name)
    return names


def session_tenant(layout: TableLayout) -> str:
    """SQL for the tenant a session acts for: the one its role is bound to (see
    :func:`grant_tenant_statements`), else its pepperpy.tenant setting."""
    return (
        f"coalesce((SELECT b.tenant FROM {layout.qualified_tenant_roles} b "
        f"WHERE b.role_name = current_user), current_setting('{TENANT_SETTING}', true))"
    )


def row_level_security_statements(layout: TableLayout) -> list[str]:
    """Turn on tenant isolation in the database itself: every session, the table owner's
    included, sees and writes only rows of its tenant — the one its role is bound to, else the
    one its pepperpy.tenant setting names (superusers and roles with BYPASSRLS are exempt, as
    always in PostgreSQL)."""
    return [
        statement
        for name in tenant_tables(layout)
        for statement in _tenant_policy_statements(layout, qualified(layout.schema, name))
    ]


def cluster_row_level_security_statements(
    layout: TableLayout, bindings: Sequence[tuple[str, str]]
) -> list[str]:
    """:func:`row_level_security_statements` as a Citus cluster runs them, ``bindings`` being
    the (role, tenant) pairs bound so far.

    Citus refuses a policy holding a subquery on a distributed table, a function that reads
    the bindings would run a distributed query from a shard (refused too), and it copies
    every policy to the workers as a permissive one: so each bound role gets a policy of
    its own naming its tenant as a constant, and the tenant policy, which trusts the
    pepperpy.tenant setting, names the bound roles it leaves out. The same rows as on one
    server: a bound role acts for its tenant whatever it sets."""
    roles = [role for role, _ in bindings]
    statements = []
    for name in tenant_tables(layout):
        table = qualified(layout.schema, name)
        statements += _tenant_policy_statements(layout, table, _unbound_tenant(roles))
        for role, tenant in bindings:
            statements += _bound_policy_statements(table, role, tenant)
    return statements


def bound_role_policy_statements(
    layout: TableLayout, role: str, tenant: str, bound_roles: Sequence[str]
) -> list[str]:
    """On a cluster, what binding ``role`` to ``tenant`` takes on every table the tenant
    policy covers: the role's own policy (replacing an earlier binding of it), and the
    tenant policy leaving out ``bound_roles`` (the role among them)."""
    statements = []
    for name in tenant_tables(layout):
        table = qualified(layout.schema, name)
        statements += _tenant_policy_statements(layout, table, _unbound_tenant(bound_roles))
        statements += _bound_policy_statements(table, role, tenant)
    return statements


def _unbound_tenant(bound_roles: Sequence[str]) -> str:
    """The tenant policy's condition on a cluster: the row's tenant is the one the setting
    names, for a role bound to none."""
    roles = ", ".join(text_literal(role) for role in sorted(set(bound_roles)))
    return (
        f"tenant = current_setting('{TENANT_SETTING}', true) "
        f"AND current_user::text <> ALL (ARRAY[{roles}]::text[])"
    )


def _bound_policy_statements(table: str, role: str, tenant: str) -> list[str]:
    # A policy's name is the table's own namespace: a digest of the role keeps it short and
    # the same for every binding of that role.
    policy = quote_ident(f"bound_{hashlib.sha256(role.encode()).hexdigest()[:24]}")
    literal = text_literal(tenant)
    return [
        f"DROP POLICY IF EXISTS {policy} ON {table}",
        f"CREATE POLICY {policy} ON {table} TO {quote_name(role)} "
        f"USING (tenant = {literal}) WITH CHECK (tenant = {literal})",
    ]


def _tenant_policy_statements(
    layout: TableLayout, table: str, condition: str | None = None
) -> list[str]:
    """:func:`row_level_security_statements` for one of the store's tables (``condition``:
    which rows the policy admits, by default those of :func:`session_tenant`)."""
    policy = layout.index_name(TENANT_POLICY)
    if condition is None:
        condition = f"tenant = {session_tenant(layout)}"
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        *(f"DROP POLICY IF EXISTS {layout.index_name(old)} ON {table}" for old in _OLD_POLICIES),
        f"DROP POLICY IF EXISTS {policy} ON {table}",
        f"CREATE POLICY {policy} ON {table} USING ({condition}) WITH CHECK ({condition})",
    ]


def grant_tenant_statements(layout: TableLayout, role: str) -> list[str]:
    """What a role that is not the tables' owner needs to run a store of one tenant: read the
    registries, read and write the store's tables (row-level security keeps it to its tenant,
    backfill positions included). Binding the role is :func:`bind_tenant_role`'s."""
    grantee = quote_ident(role)
    registries = [qualified(layout.schema, name) for name in REGISTRY_TABLES]
    tables = [qualified(layout.schema, name) for name in tenant_tables(layout)]
    return [
        f"GRANT USAGE ON SCHEMA {quote_ident(layout.schema)} TO {grantee}",
        f"GRANT SELECT ON {', '.join(registries)} TO {grantee}",
        # Earlier releases granted the schema-wide positions table: every tenant's rows.
        f"REVOKE ALL ON {qualified(layout.schema, BACKFILLS)} FROM {grantee}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(tables)} TO {grantee}",
        f"GRANT SELECT ON {layout.qualified_tenant_roles} TO {grantee}",
    ]


def bind_tenant_role(layout: TableLayout, role: str, tenant: str) -> Query:
    """Bind ``role`` to ``tenant``: its sessions act for that tenant whatever they set."""
    return Query(
        f"INSERT INTO {layout.qualified_tenant_roles} (role_name, tenant) VALUES ($1, $2) "
        # (The new moment from the row inserted: Citus calls no volatile function in SET.)
        "ON CONFLICT (role_name) DO UPDATE SET tenant = excluded.tenant, "
        "bound_at = excluded.bound_at",
        [role, tenant],
    )


IDENTITY_COLUMNS = ("tenant", "scope", "scope_id", "key")
"""What names one memory: its owner (tenant, scope, scope_id) and its key. The primary key."""


def same_memory(left: str, right: str) -> str:
    """SQL: the rows (or records) named ``left`` and ``right`` are of one memory."""
    return " AND ".join(f"{left}.{column} = {right}.{column}" for column in IDENTITY_COLUMNS)


def refreshed(check: str, alias: str, moment: str) -> str:
    """SQL: a TTL refresh of the memory row ``alias`` (of its current expiry: see
    :func:`_v23_expiry_refreshes`) lasts past ``moment``, asked of ``check``
    (TableLayout.refresh_check)."""
    identity = ", ".join(f"{alias}.{column}" for column in IDENTITY_COLUMNS)
    return f"{check}({identity}, {alias}.expires_at, {moment})"


def live(
    check: str | None, alias: str = "m", moment: str = "now()", any_refresh: str | None = None
) -> str:
    """SQL: the memory row ``alias`` has not expired at ``moment`` — it has no expiry, its
    own is later, or a refresh of it is (``check``: TableLayout.refresh_check; None: no
    refreshes are kept). Every statement that judges expiry says it so (the quota trigger's
    included). ``any_refresh``: a condition evaluated once per statement, false when no row
    the statement reads can have a refresh."""
    own = f"{alias}.expires_at IS NULL OR {alias}.expires_at > {moment}"
    if check is None:
        return f"({own})"
    # Evaluated left to right: the refreshes are looked up only for rows past their own.
    if any_refresh is None:
        return f"({own} OR {refreshed(check, alias, moment)})"
    return f"({own} OR ({any_refresh} AND {refreshed(check, alias, moment)}))"


def expired(check: str | None, moment: str) -> str:
    """SQL: the old row ``m`` of an upsert had expired by ``moment`` (storing its key again
    starts a new memory)."""
    own = f"m.expires_at IS NOT NULL AND m.expires_at <= {moment}"
    if check is None:
        return f"({own})"
    return f"({own} AND NOT {refreshed(check, 'm', moment)})"


def expiry(refreshes: str | None, alias: str = "m") -> str:
    """SQL: when the memory row ``alias`` expires — its own expiry, or the later one a
    refresh of it gave (NULL: never)."""
    if refreshes is None:
        return f"{alias}.expires_at"
    return (
        f"CASE WHEN {alias}.expires_at IS NULL THEN NULL ELSE coalesce((SELECT "
        f"greatest(refresh.expires_at, {alias}.expires_at) FROM {refreshes} refresh "
        f"WHERE {same_memory('refresh', alias)} AND refresh.refreshed_from = {alias}.expires_at), "
        f"{alias}.expires_at) END"
    )


CLIENT_SCHEMA_SETTING = "pepperpy.client_schema"
"""Session setting by which a store's connections say which schema version they speak."""
_OWNER_IDENTITY_VERSION = 4
APPLICATION_NAME = "pepperpy-pg-memory"
_GUARD = "pepperpy_reject_old_clients"


def _v4_owner_identity(layout: TableLayout) -> list[str]:
    # The key alone was the primary key, so a write under another owner's key took that
    # memory over. Swapping the constraint builds one index and rewrites no row: every row
    # keeps its created_at and its embedding. Citus requires the distribution column
    # (scope_id) in every unique index; the primary key is the only one.
    table = layout.qualified_table
    pkey = layout.index_name("pkey")
    return [
        f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {pkey}, "
        f"ADD CONSTRAINT {pkey} PRIMARY KEY ({', '.join(IDENTITY_COLUMNS)})",
        # Calls that name a key without its owner look it up across owners.
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('key_idx')} ON {table} (key)",
        # The primary key leads with tenant.
        f"DROP INDEX IF EXISTS {layout.qualified_index('tenant_idx')}",
        # A process still running the previous release would delete, touch or sweep by key
        # alone, across owners. Its connections announce themselves by application name and
        # lack the client schema setting: their writes are refused with a message that says
        # what to do. (Its upserts fail on their own: ON CONFLICT (key) matches no
        # constraint any more.) Sessions of other programs (psql, admin scripts) pass.
        *_old_client_guard(layout, _OWNER_IDENTITY_VERSION, "per-owner memory identity", _GUARD),
    ]


def _old_client_guard(layout: TableLayout, version: int, change: str, name: str) -> list[str]:
    """Refuse writes from this library's connections that speak a schema older than
    ``version`` (they would break what ``change`` introduced)."""
    table = layout.qualified_table
    # One function per schema and version (shared by the schema's tables at that version:
    # a table not yet upgraded keeps the guard it has), one trigger per table.
    guard = qualified(layout.schema, name)
    return [
        f"""
        CREATE OR REPLACE FUNCTION {guard}() RETURNS trigger LANGUAGE plpgsql AS $guard$
        BEGIN
            IF current_setting('application_name', true) = '{APPLICATION_NAME}'
               AND coalesce(nullif(current_setting('{CLIENT_SCHEMA_SETTING}', true), ''),
                            '0')::int < {int(version)} THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'object_not_in_prerequisite_state',
                    MESSAGE = format('%I.%I was upgraded to {change} '
                        '(schema {int(version)}) by a newer pepperpy-pg-memory; '
                        'this process runs an older release and may not write to it',
                        TG_TABLE_SCHEMA, TG_TABLE_NAME),
                    HINT = 'Stop every process running the older release and upgrade it.';
            END IF;
            RETURN NULL;
        END
        $guard$
        """,
        f"CREATE OR REPLACE TRIGGER {quote_ident(name)} "
        f"BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {guard}()",
    ]


PASSAGES_VERSION = 5


def _v5_passages(layout: TableLayout) -> list[str]:
    # A memory may carry passages: texts embedded one by one (LangGraph embeds each indexed
    # field of an item apart), and a semantic search scores the memory by the best of its own
    # vector and theirs. They live beside the memory, keyed by its identity and a position;
    # the foreign key deletes them with it (by delete, sweep or clear) and no write can hang
    # a passage on a memory that does not exist. A new, empty table: instant on any database.
    passages = layout.qualified_passages
    owner = ", ".join(IDENTITY_COLUMNS)
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {passages} (
            tenant     text NOT NULL,
            scope      text NOT NULL,
            scope_id   text NOT NULL,
            key        text NOT NULL,
            position   integer NOT NULL CHECK (position >= 0),
            content    text NOT NULL,
            embedding  {layout.vector_column_type},
            PRIMARY KEY ({owner}, position),
            FOREIGN KEY ({owner}) REFERENCES {layout.qualified_table} ({owner})
                ON DELETE CASCADE
        )
        """,
        layout.passages_hnsw_statement(),
        # A process of the previous release would write a memory without replacing its
        # passages, leaving vectors of text the memory no longer has: it may not write.
        f"DROP TRIGGER IF EXISTS {quote_ident(_GUARD)} ON {layout.qualified_table}",
        *_old_client_guard(
            layout,
            PASSAGES_VERSION,
            "per-owner memory identity and passages",
            f"{_GUARD}_before_{PASSAGES_VERSION}",
        ),
    ]


# What makes a token an identifier: letters and digits joined by - _ . / # (A-77812,
# db-prod-08, v3.11, user_id), or letters and digits run together (TP1352, x86).
IDENTIFIER_TOKEN = (
    r"[[:alnum:]]+(?:[-_./#][[:alnum:]]+)+"
    r"|[[:alnum:]]*(?:[[:alpha:]][[:digit:]]|[[:digit:]][[:alpha:]])[[:alnum:]]*"
)
# Cheap test for "may hold an identifier": most memories hold none and skip the extraction.
_MAY_HOLD_IDENTIFIER = (
    r"[[:alnum:]][-_./#][[:alnum:]]|[[:alpha:]][[:digit:]]|[[:digit:]][[:alpha:]]"
)
# Where an identifier splits into its parts: at joiners and between letters and digits.
_IDENTIFIER_PARTS = (
    r"[^[:alpha:][:digit:]]+|(?<=[[:alpha:]])(?=[[:digit:]])|(?<=[[:digit:]])(?=[[:alpha:]])"
)


def _v6_terms(layout: TableLayout) -> list[str]:
    # Contextual recall ranks by the terms of a memory: the text search configuration's
    # lexemes plus its identifiers, whole and by their parts (the default parser splits
    # A-77812 into a stop word and '-77812'). A new column, NULL for existing rows until
    # the online backfill (backfill.TERMS) fills it: adding it rewrites nothing. A trigger
    # keeps it current for every writer, this release's and the previous one's.
    schema, table = layout.schema, layout.qualified_table
    identifiers = qualified(schema, "pepperpy_identifier_terms")
    setter = qualified(schema, "pepperpy_set_terms")
    return [
        f"""
        CREATE OR REPLACE FUNCTION {identifiers}(content text) RETURNS text[]
        IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql AS $terms$
            SELECT CASE WHEN content !~ '{_MAY_HOLD_IDENTIFIER}' THEN '{{}}'::text[] ELSE (
                SELECT coalesce(array_agg(DISTINCT term), '{{}}') FROM (
                    SELECT DISTINCT lower(m[1]) AS token
                    FROM regexp_matches(content, '({IDENTIFIER_TOKEN})', 'g') m
                ) tokens
                CROSS JOIN LATERAL (
                    SELECT token UNION ALL
                    SELECT unnest(regexp_split_to_array(token, '{_IDENTIFIER_PARTS}'))
                ) AS parts(term)
                WHERE term <> ''
            ) END
        $terms$
        """,
        f"""
        CREATE OR REPLACE FUNCTION {terms_function(schema)}(config regconfig, content text)
        RETURNS tsvector IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql AS $terms$
            SELECT to_tsvector(config, content) || array_to_tsvector({identifiers}(content))
        $terms$
        """,
        # The configuration comes as the trigger's argument: one function for every table.
        f"""
        CREATE OR REPLACE FUNCTION {setter}() RETURNS trigger LANGUAGE plpgsql AS $terms$
        BEGIN
            IF TG_OP = 'UPDATE' AND NEW.content IS NOT DISTINCT FROM OLD.content
               AND NEW.indices IS NOT DISTINCT FROM OLD.indices AND OLD.terms IS NOT NULL THEN
                RETURN NEW;
            END IF;
            NEW.terms := CASE WHEN NEW.indices @> ARRAY['contextual']
                THEN {terms_function(schema)}(TG_ARGV[0]::regconfig, NEW.content) END;
            RETURN NEW;
        END
        $terms$
        """,
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS terms tsvector",
        layout.terms_trigger_statement(),
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('terms_idx')} ON {table} "
        f"USING gin (terms) WITH (gin_pending_list_limit = {GIN_PENDING_LIST_KB})",
        # Document frequencies per tenant, refreshed in the background (term_stats.py): a
        # counter updated by every write would be a hot row under write bursts.
        f"""
        CREATE TABLE IF NOT EXISTS {layout.qualified_term_stats} (
            tenant  text NOT NULL,
            term    text NOT NULL,
            df      integer NOT NULL,
            PRIMARY KEY (tenant, term)
        )
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {layout.qualified_term_totals} (
            tenant        text PRIMARY KEY,
            documents     bigint NOT NULL,
            avg_length    float8 NOT NULL,
            refreshed_at  timestamptz NOT NULL DEFAULT now()
        )
        """,
    ]


# The largest tuple PostgreSQL keeps whole in an 8 kB page (BLCKSZ less the page header).
_INLINE_TUPLE_BYTES = 8160


def _v7_vectors_inline(layout: TableLayout) -> list[str]:
    # A memory row is about 2 kB (a 384-dimensional vector is 1.5 kB), around PostgreSQL's
    # 2 kB TOAST threshold; past it the vector, the largest value, moves to the TOAST table,
    # and every read of it (the distance of each result, an exact filtered search, a
    # reindex) costs an extra index lookup: an exact search over 200 rows took 2.8x as long.
    # Rows now stay whole up to a page; larger values (long texts) are still moved out.
    # A storage parameter: instant, for rows written from now on.
    return [
        f"ALTER TABLE {table} SET (toast_tuple_target = {_INLINE_TUPLE_BYTES})"
        for table in (layout.qualified_table, layout.qualified_passages)
    ]


HISTORY_OPERATION_SETTING = "pepperpy.operation"
HISTORY_ACTOR_SETTING = "pepperpy.actor"
HISTORY_REASON_SETTING = "pepperpy.reason"
HISTORY_SETTING = "pepperpy.history"
"""Session setting: 'off' when the store was configured with ``history=False``."""
RECORDING = f"coalesce(current_setting('{HISTORY_SETTING}', true), '') <> 'off'"
"""Whether the session records versions (the store's ``history`` setting), in SQL: the
history triggers and a bulk merge that records its own versions ask the same."""
IMPORTING_SETTING = "pepperpy.importing"
"""Transaction setting: 'on' while an import restores memories with their own history."""

# The columns a version repeats from the memory row, in the history table's order, as
# migration 8 created it (migration 9 adds importance).
_V8_VERSIONED_COLUMNS = (
    "tenant",
    "scope",
    "scope_id",
    "key",
    "version",
    "value",
    "content",
    "content_hash",
    "memory_type",
    "indices",
    "metadata",
    "embedding",
    "created_at",
    "expires_at",
    "valid_from",
    "valid_to",
    "supersedes",
    "superseded_by",
)


# A version's identity, moments and expiry: what does not make it differ from the one before.
_NOT_COMPARED = ("tenant", "scope", "scope_id", "key", "version", "created_at", "expires_at")


def _history_function_names(layout: TableLayout) -> tuple[str, str]:
    """The table's trigger functions: the one numbering versions, the one recording them."""
    return (
        qualified(layout.schema, f"{layout.table}_number_version"),
        qualified(layout.schema, f"{layout.table}_record_version"),
    )


def _history_functions(layout: TableLayout, versioned: tuple[str, ...]) -> list[str]:
    """(Re)create the trigger functions that number a memory's versions and record them,
    copying the ``versioned`` columns into the history."""
    table, history = layout.qualified_table, layout.qualified_history
    number, record = _history_function_names(layout)
    columns = ", ".join(versioned)
    old = ", ".join(f"OLD.{column}" for column in versioned)
    # The current version's vector is the memory row's; its history row gets it when the
    # version is replaced (see _v27_current_vector_kept_once).
    new = ", ".join("NULL" if column == "embedding" else f"NEW.{column}" for column in versioned)
    inserted, replaced = same_memory("h", "NEW"), same_memory("h", "OLD")
    # What makes a version differ from the one before (not its moments or its expiry).
    compared = [column for column in versioned if column not in _NOT_COMPARED]
    old_content = ", ".join(f"OLD.{column}" for column in compared)
    new_content = ", ".join(f"NEW.{column}" for column in compared)
    setting = "nullif(current_setting('{}', true), '')".format
    recording = RECORDING
    importing = f"coalesce(current_setting('{IMPORTING_SETTING}', true), '') = 'on'"
    return [
        # (A migration re-creating it sets its plan_cache_mode again: see
        # _v26_triggers_planned_once.)
        f"""
        CREATE OR REPLACE FUNCTION {number}() RETURNS trigger LANGUAGE plpgsql AS $version$
        DECLARE
            last_version integer;
            last_at timestamptz;
        BEGIN
            IF {importing} THEN
                -- An import bringing its own history: rows keep the versions they had,
                -- and are marked in_history once the import has written their versions.
                -- It never changes a memory already here (another history).
                IF TG_OP = 'INSERT' THEN
                    NEW.in_history := false;
                ELSIF NEW.updated_at IS DISTINCT FROM OLD.updated_at THEN
                    RAISE EXCEPTION USING
                        ERRCODE = 'check_violation',
                        MESSAGE = format('memory %L is already stored with another history: '
                            'import with history into a table without it', NEW.key);
                ELSE
                    NEW.version := OLD.version;
                END IF;
                RETURN NEW;
            END IF;
            IF TG_OP = 'INSERT' THEN
                -- A memory deleted and stored again continues its numbering. A writer of
                -- the memory that has not committed (a delete above all, whose version the
                -- history does not show yet) is waited for on the memory's row, the lock
                -- every writer of it takes first; the next statement's snapshot then shows
                -- its version. A live row means this insert becomes an update, which
                -- numbers itself.
                PERFORM 1 FROM {table} m WHERE {same_memory("m", "NEW")}
                    FOR NO KEY UPDATE;
                IF NOT FOUND THEN
                    SELECT h.version, h.at INTO last_version, last_at FROM {history} h
                    WHERE {inserted} ORDER BY h.version DESC LIMIT 1;
                    NEW.version := coalesce(last_version, 0) + 1;
                    -- The write's moment was taken before it waited: versions keep the
                    -- order of their moments.
                    IF NEW.updated_at <= last_at THEN
                        NEW.updated_at := clock_timestamp();
                    END IF;
                END IF;
                NEW.in_history := {recording};
            ELSIF NEW.updated_at IS DISTINCT FROM OLD.updated_at
                  AND {setting(HISTORY_OPERATION_SETTING)} IS NULL
                  AND NEW.created_at = OLD.created_at
                  AND ROW({old_content}) IS NOT DISTINCT FROM ROW({new_content}) THEN
                -- The memory written again as it is (a write retried after its connection
                -- broke, above all): no new version, so a retry is safe. An expiry given
                -- with it still applies. A named operation (a reinforcement, a restore)
                -- is an event of its own and is recorded.
                NEW.updated_at := OLD.updated_at;
                NEW.version := OLD.version;
                NEW.in_history := OLD.in_history;
            ELSIF NEW.updated_at IS DISTINCT FROM OLD.updated_at THEN
                NEW.version := OLD.version + 1;
                NEW.in_history := {recording};
                -- On a Citus cluster the coordinator takes the write's moment before the
                -- worker locks the row: a write that waited for another one of the same
                -- memory can bring the earlier moment. Versions keep the order of their
                -- moments (reads "as of" a moment rely on it).
                IF NEW.updated_at <= OLD.updated_at THEN
                    NEW.updated_at := greatest(clock_timestamp(),
                                               OLD.updated_at + interval '1 microsecond');
                END IF;
            ELSE
                NEW.version := OLD.version;
                NEW.in_history := OLD.in_history;
            END IF;
            RETURN NEW;
        END
        $version$
        """,
        f"""
        CREATE OR REPLACE FUNCTION {record}() RETURNS trigger LANGUAGE plpgsql AS $history$
        DECLARE
            operation text := {setting(HISTORY_OPERATION_SETTING)};
            actor text := {setting(HISTORY_ACTOR_SETTING)};
            reason text := {setting(HISTORY_REASON_SETTING)};
            moment timestamptz := CASE TG_OP WHEN 'DELETE' THEN clock_timestamp()
                                  ELSE NEW.updated_at END;
        BEGIN
            IF {importing} THEN
                RETURN NULL;
            END IF;
            IF TG_OP <> 'INSERT' THEN
                IF OLD.in_history THEN
                    UPDATE {history} h SET replaced_at = moment,
                        embedding = coalesce(h.embedding, OLD.embedding)
                    WHERE {replaced} AND h.version = OLD.version;
                ELSIF {recording} THEN
                    -- The version being replaced, which history lacks.
                    INSERT INTO {history} ({columns}, operation, at, replaced_at)
                    VALUES ({old}, CASE WHEN OLD.version = 1 THEN 'create' ELSE 'update' END,
                            OLD.updated_at, moment)
                    ON CONFLICT DO NOTHING;
                END IF;
            END IF;
            IF NOT {recording} THEN
                RETURN NULL;
            END IF;
            IF TG_OP = 'DELETE' THEN
                INSERT INTO {history} ({columns}, operation, actor, reason, at)
                VALUES ({old.replace("OLD.version", "OLD.version + 1")},
                        coalesce(operation, 'delete'), actor, reason, moment);
            ELSE
                INSERT INTO {history} ({columns}, operation, actor, reason, at)
                VALUES ({new}, coalesce(operation,
                        CASE WHEN TG_OP = 'INSERT' THEN 'create' ELSE 'update' END),
                        actor, reason, moment)
                ON CONFLICT DO NOTHING;
                IF NOT FOUND THEN
                    -- A new row's number was taken before a delete and a re-store of the
                    -- memory by others both committed (an insert re-checks its conflicts
                    -- without numbering again): the write is retried, and numbers anew.
                    RAISE EXCEPTION USING
                        ERRCODE = 'serialization_failure',
                        MESSAGE = format('memory %L was written by another transaction while '
                            'this one numbered its version', NEW.key);
                END IF;
            END IF;
            RETURN NULL;
        END
        $history$
        """,
    ]


def _v8_history(layout: TableLayout) -> list[str]:
    # Every change to a memory becomes a version in a history table, written by triggers in
    # the transaction of the change, whoever the writer is (this release, an adapter, psql).
    # The memory row carries its version: a BEFORE trigger numbers it (gapless: concurrent
    # writers of one memory queue on its row lock). A write that leaves updated_at alone
    # (a TTL refresh, an embedding repair, a backfill) is bookkeeping, not a version.
    # A version says when it was replaced (replaced_at), and a row whether its version is
    # in the history (in_history): "current at a moment" is then a test on one row, which
    # no plan can turn into a join over the whole history.
    # New columns are NULL or a constant: adding them rewrites no row. valid_from NULL
    # means created_at. Rows from before this migration (in_history false) get their
    # version recorded when they next change; until then reads "as of" a moment take them
    # from the table itself.
    table, history = layout.qualified_table, layout.qualified_history
    owner = ", ".join(IDENTITY_COLUMNS)
    number, record = _history_function_names(layout)
    return [
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS version integer NOT NULL DEFAULT 1, "
        "ADD COLUMN IF NOT EXISTS valid_from timestamptz, "
        "ADD COLUMN IF NOT EXISTS valid_to timestamptz, "
        "ADD COLUMN IF NOT EXISTS supersedes text, "
        "ADD COLUMN IF NOT EXISTS superseded_by text, "
        "ADD COLUMN IF NOT EXISTS in_history boolean NOT NULL DEFAULT false",
        f"""
        CREATE TABLE IF NOT EXISTS {history} (
            tenant         text NOT NULL,
            scope          text NOT NULL,
            scope_id       text NOT NULL,
            key            text NOT NULL,
            version        integer NOT NULL,
            value          jsonb NOT NULL,
            content        text NOT NULL,
            content_hash   bytea NOT NULL,
            memory_type    text NOT NULL,
            indices        text[] NOT NULL,
            metadata       jsonb NOT NULL,
            embedding      {layout.vector_column_type},
            created_at     timestamptz NOT NULL,
            expires_at     timestamptz,
            valid_from     timestamptz,
            valid_to       timestamptz,
            supersedes     text,
            superseded_by  text,
            operation      text NOT NULL,
            actor          text,
            reason         text,
            at             timestamptz NOT NULL,
            replaced_at    timestamptz,
            PRIMARY KEY ({owner}, version)
        ) WITH (toast_tuple_target = {_INLINE_TUPLE_BYTES})
        """,
        # Trimming by age scans by time; reads as of a moment look for the versions
        # replaced since.
        f"CREATE INDEX IF NOT EXISTS {quote_ident(layout.history_name + '_at_idx')} "
        f"ON {history} (tenant, at)",
        f"CREATE INDEX IF NOT EXISTS {quote_ident(layout.history_name + '_replaced_idx')} "
        f"ON {history} (tenant, replaced_at) WHERE replaced_at IS NOT NULL",
        # Rows whose version the history lacks (from before it, or written with it off):
        # few, and read by every "as of" read.
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('unrecorded_idx')} "
        f"ON {table} (tenant, updated_at) WHERE NOT in_history",
        *_history_functions(layout, _V8_VERSIONED_COLUMNS),
        f"CREATE OR REPLACE TRIGGER {layout.index_name('number_version')} "
        f"BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {number}()",
        f"CREATE OR REPLACE TRIGGER {layout.index_name('history_insert')} "
        f"AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {record}()",
        f"CREATE OR REPLACE TRIGGER {layout.index_name('history_update')} "
        f"AFTER UPDATE ON {table} FOR EACH ROW "
        f"WHEN (OLD.version IS DISTINCT FROM NEW.version) EXECUTE FUNCTION {record}()",
        f"CREATE OR REPLACE TRIGGER {layout.index_name('history_delete')} "
        f"AFTER DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {record}()",
    ]


ACCESS_VERSION = 9
_V9_VERSIONED_COLUMNS = (*_V8_VERSIONED_COLUMNS, "importance")
VERSIONED_COLUMNS = _V9_VERSIONED_COLUMNS
"""The columns a version repeats from the memory row, in the history table's order."""
VERSION_CONTENT_COLUMNS = tuple(c for c in VERSIONED_COLUMNS if c not in _NOT_COMPARED)
"""What makes a version differ from the one before (not its identity, moments or expiry)."""


def _v9_importance_and_access(layout: TableLayout) -> list[str]:
    # Importance is the memory's (a version records it). Access counts are bookkeeping,
    # kept beside the memory: counting a read in the memory row would rewrite it, and a
    # non-HOT update re-inserts it into the HNSW and GIN indexes. The constant default
    # rewrites no row, and the check is NOT VALID: existing rows hold the default, and
    # validating would scan the table under its lock.
    table, history = layout.qualified_table, layout.qualified_history
    owner = ", ".join(IDENTITY_COLUMNS)
    return [
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS importance real NOT NULL DEFAULT 0.5",
        f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {layout.index_name('importance_range')}",
        f"ALTER TABLE {table} ADD CONSTRAINT {layout.index_name('importance_range')} "
        "CHECK (importance >= 0 AND importance <= 1) NOT VALID",
        f"ALTER TABLE {history} ADD COLUMN IF NOT EXISTS importance real NOT NULL DEFAULT 0.5",
        *_history_functions(layout, _V9_VERSIONED_COLUMNS),
        f"""
        CREATE TABLE IF NOT EXISTS {layout.qualified_access} (
            tenant            text NOT NULL,
            scope             text NOT NULL,
            scope_id          text NOT NULL,
            key               text NOT NULL,
            access_count      bigint NOT NULL,
            last_accessed_at  timestamptz NOT NULL,
            PRIMARY KEY ({owner}),
            FOREIGN KEY ({owner}) REFERENCES {table} ({owner}) ON DELETE CASCADE
        )
        """,
    ]


DEDUPE_VERSION = 10


def normalized_function(schema: str) -> str:
    """The qualified name of ``normalized(content text) -> text``: lower case, runs of space
    as one, trimmed; what "the same text" means to deduplication."""
    return qualified(schema, "pepperpy_normalized")


def dedupe_identifiers_function(schema: str) -> str:
    """The qualified name of ``dedupe_identifiers(content text) -> text[]``: the text's
    identifiers (as contextual terms see them) and numbers, sorted: two texts whose lists
    differ are never duplicates, however close their vectors."""
    return qualified(schema, "pepperpy_dedupe_identifiers")


def _v10_dedupe(layout: TableLayout) -> list[str]:
    # Deduplication on write looks a text up among its owner's memories by its normalised
    # form. An index build (like migration 4's primary key), not a rewrite: about 0.5 s per
    # 100,000 rows, under the migration lock.
    schema = layout.schema
    normalized = normalized_function(schema)
    identifiers = qualified(schema, "pepperpy_identifier_terms")
    return [
        f"""
        CREATE OR REPLACE FUNCTION {normalized}(content text) RETURNS text
        IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql AS $normalized$
            SELECT lower(regexp_replace(btrim(content), '[[:space:]]+', ' ', 'g'))
        $normalized$
        """,
        f"""
        CREATE OR REPLACE FUNCTION {dedupe_identifiers_function(schema)}(content text)
        RETURNS text[] IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql AS $identifiers$
            SELECT coalesce(array_agg(DISTINCT token ORDER BY token), '{{}}') FROM (
                SELECT unnest({identifiers}(content))
                UNION ALL
                SELECT (regexp_matches(content, '[[:digit:]]+', 'g'))[1]
            ) AS tokens(token)
        $identifiers$
        """,
        # The text's hash leads: led by the tenant, the planner took this index for small
        # searches' exact scans, whose order among equal distances then changed with the
        # page size (pages repeated rows).
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('dedupe_idx')} ON {layout.qualified_table} "
        f"(md5({normalized}(content)), tenant, scope, scope_id)",
    ]


OWNER_LOCK_CLASS = 0x64656475  # "dedu"
"""First key of ``pg_advisory_xact_lock(int, int)`` locks on one owner's memories (the second:
``hashtext`` of tenant, scope and scope id joined by U+001F), held by writes that must see
the owner's memories unchanged until they commit: deduplication and the quota. (The two-key
space does not meet the one-key locks of migrations and statistics.)"""

QUOTA_SETTING = "pepperpy.max_memories_per_owner"
"""Session setting: the most memories one owner may hold (unset: no limit)."""


def quota_function(schema: str) -> str:
    return qualified(schema, "pepperpy_enforce_quota")


def quota_function_statement(layout: TableLayout, refresh_check: str | None = None) -> str:
    """(Re)create the quota trigger's function (see _v11_quota), counting memories a TTL
    refresh keeps live as ``refresh_check`` says (see _v23_expiry_refreshes; None: by their
    rows alone, as on a cluster)."""
    # Counting the owner's memories costs a row each. First every row of the owner, from the
    # primary key's index alone: fewer than the limit, and there is room. Only then the live
    # memories that are not adapters' records, and no further than a little past the limit
    # (an owner over a lowered limit sheds up to 100 a write).
    function, table = quota_function(layout.schema), layout.qualified_table
    owner = (
        "m.tenant = NEW.tenant AND m.scope = NEW.scope AND m.scope_id = NEW.scope_id "
        f"AND {live(refresh_check)} AND NOT m.metadata ? '{MANAGED_FIELD}'"
    )
    setting = "current_setting('{}', true)".format
    candidates = f"""
        SELECT m.scope, m.scope_id, m.key FROM {table} m
        LEFT JOIN {layout.qualified_access} a ON {same_memory("a", "m")}
        WHERE {owner} AND m.memory_type <> 'long_term'
          AND m.xmin <> pg_current_xact_id()::xid
        ORDER BY m.importance, coalesce(a.last_accessed_at, m.created_at), m.key"""
    victims, victims_left = f"{candidates} LIMIT excess", f"{candidates} LIMIT excess - evicted"
    evict = f"""DELETE FROM {table} m WHERE m.tenant = NEW.tenant AND m.scope = victim.scope
                    AND m.scope_id = victim.scope_id AND m.key = victim.key;
                IF FOUND THEN
                    evicted := evicted + 1;
                END IF;"""
    # (A migration re-creating it sets its plan_cache_mode again on one server: see
    # _v26_triggers_planned_once.)
    return f"""
        CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $quota$
        DECLARE
            quota integer := nullif({setting(QUOTA_SETTING)}, '')::integer;
            held integer;
            excess integer;
            evicted integer := 0;
            victim record;
            saved text[];
            room_name text;
            room integer;
        BEGIN
            IF quota IS NULL OR NEW.metadata ? '{MANAGED_FIELD}'
               OR coalesce({setting(IMPORTING_SETTING)}, '') = 'on' THEN
                RETURN NEW;
            END IF;
            -- Counted once per owner and transaction, under the owner's lock, which is held
            -- to the transaction's end and keeps every other writer of the owner out: the
            -- room left then only shrinks by this transaction's own writes, each of which
            -- spends one (an update of a memory too: the next count corrects it). A bulk
            -- load counted each row's owner again on every row: 84 microseconds a row at
            -- 100 memories an owner.
            room_name := 'pepperpy_quota.r' || md5(concat_ws(chr(31), TG_TABLE_SCHEMA,
                TG_TABLE_NAME, NEW.tenant, NEW.scope, NEW.scope_id));
            room := nullif(current_setting(room_name, true), '')::integer;
            IF room > 0 THEN
                PERFORM set_config(room_name, (room - 1)::text, true);
                RETURN NEW;
            END IF;
            PERFORM pg_advisory_xact_lock({OWNER_LOCK_CLASS},
                hashtext(concat_ws(chr(31), NEW.tenant, NEW.scope, NEW.scope_id)));
            IF EXISTS (SELECT 1 FROM {table} m WHERE {owner} AND m.key = NEW.key) THEN
                RETURN NEW;
            END IF;
            SELECT count(*) INTO held FROM (
                SELECT 1 FROM {table} m WHERE m.tenant = NEW.tenant AND m.scope = NEW.scope
                  AND m.scope_id = NEW.scope_id LIMIT quota) every_row;
            IF held < quota THEN
                PERFORM set_config(room_name, (quota - held - 1)::text, true);
                RETURN NEW;
            END IF;
            SELECT count(*) INTO held FROM (
                SELECT 1 FROM {table} m WHERE {owner} LIMIT quota + 100) counted;
            excess := held - quota + 1;
            IF excess <= 0 THEN
                RETURN NEW;
            END IF;
            saved := ARRAY[{setting(HISTORY_SETTING)}, {setting(HISTORY_OPERATION_SETTING)},
                           {setting(HISTORY_REASON_SETTING)}];
            PERFORM set_config('{HISTORY_SETTING}', 'on', true),
                    set_config('{HISTORY_OPERATION_SETTING}', 'evict', true),
                    set_config('{HISTORY_REASON_SETTING}',
                        format('quota: at most %s memories per owner', quota), true);
            -- Victims another transaction is writing are passed over first: waiting for one
            -- while holding the owner's lock could close a cycle with a writer that holds
            -- it and wants the lock. Only when the free ones are too few are the others
            -- waited for (a delete or a TTL refresh, which never wants the owner's lock).
            FOR victim IN {victims} FOR UPDATE OF m SKIP LOCKED LOOP
                {evict}
            END LOOP;
            IF evicted < excess THEN
                FOR victim IN {victims_left} FOR UPDATE OF m LOOP
                    {evict}
                END LOOP;
            END IF;
            PERFORM set_config('{HISTORY_SETTING}', coalesce(saved[1], ''), true),
                    set_config('{HISTORY_OPERATION_SETTING}', coalesce(saved[2], ''), true),
                    set_config('{HISTORY_REASON_SETTING}', coalesce(saved[3], ''), true);
            IF evicted < excess THEN
                -- Memories deleted meanwhile by the writers waited for count too.
                SELECT count(*) INTO held FROM (
                    SELECT 1 FROM {table} m WHERE {owner} LIMIT quota + 100) counted;
                IF held >= quota THEN
                    RAISE EXCEPTION USING ERRCODE = '{QUOTA_SQLSTATE}',
                        MESSAGE = format('%s:%s holds %s memories, the most allowed is %s, '
                            'and none it could give up is older than this write and not '
                            'long-term', NEW.scope, NEW.scope_id, held, quota);
                END IF;
            END IF;
            RETURN NEW;
        END
        $quota$
        """


def _v11_quota(layout: TableLayout) -> list[str]:
    # A per-owner quota is enforced where every writer passes (store, batches, adapters,
    # imports), in the transaction of the write: a BEFORE INSERT trigger, which does nothing
    # unless the session sets a limit (its WHEN clause, so unlimited stores pay nothing). A
    # row that will replace a live memory (an upsert) adds none. At the limit the owner's
    # lowest-ranked memory that is not long-term is deleted — recorded in the history as an
    # eviction even when history is off for the store — or the write fails. Rows written by
    # the same transaction (their xmin is its id) are never evicted: a batch cannot push out
    # its own rows (their versions would be recorded after their deletion). A moment would
    # not do: rows committed while this write waited for the owner's lock are newer than it.
    function, table = quota_function(layout.schema), layout.qualified_table
    setting = "current_setting('{}', true)".format
    return [
        quota_function_statement(layout),
        f"""
        CREATE OR REPLACE TRIGGER {layout.index_name("quota")}
        BEFORE INSERT ON {table} FOR EACH ROW
        WHEN (nullif({setting(QUOTA_SETTING)}, '') IS NOT NULL)
        EXECUTE FUNCTION {function}()
        """,
    ]


# Words that embeddings blur as much as numbers: "Oslo in May" and "Oslo in June" are at
# cosine 0.96 with all-MiniLM-L6-v2, "Ana likes tea" and "Ana doesn't like tea" close
# behind. Two texts that differ in these never count as duplicates.
_CALENDAR_WORDS = (
    "january february march april may june july august september october november december "
    "monday tuesday wednesday thursday friday saturday sunday"
).split()
_NEGATIONS = "not no never none nothing nobody nowhere neither nor without".split()


def _v12_dedupe_calendar_and_negation(layout: TableLayout) -> list[str]:
    # Deduplication and consolidation compare these; no index holds them, so redefining
    # the function rewrites nothing.
    schema = layout.schema
    words = "|".join(_CALENDAR_WORDS + _NEGATIONS)
    return [
        f"""
        CREATE OR REPLACE FUNCTION {dedupe_identifiers_function(schema)}(content text)
        RETURNS text[] IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql AS $identifiers$
            SELECT coalesce(array_agg(DISTINCT token ORDER BY token), '{{}}') FROM (
                SELECT unnest({qualified(schema, "pepperpy_identifier_terms")}(content))
                UNION ALL
                SELECT (regexp_matches(content, '[[:digit:]]+', 'g'))[1]
                UNION ALL
                SELECT (regexp_matches(lower(content), '\\m({words})\\M', 'g'))[1]
                UNION ALL
                SELECT 'not' WHERE lower(content) ~ 'n''t\\M'
            ) AS tokens(token)
        $identifiers$
        """,
    ]


def _v13_bounded_quota_count(layout: TableLayout) -> list[str]:
    # Version 11 counted every live memory of the owner on each new one, reading each row:
    # 9 ms at 10,000.
    return [quota_function_statement(layout)]


def _v14_ordered_writers(layout: TableLayout) -> list[str]:
    # Version numbers waited for a concurrent delete only through the primary key, after the
    # number was taken (a duplicate version under a delete and a re-store); quota eviction
    # waited for rows other writers held while it held the owner's lock (a deadlock).
    # Locks follow one order: the owner's advisory lock (quota, deduplication), then the
    # memories' rows in identity order. BEFORE triggers fire in name order, so the numbering
    # trigger, which now locks the row, is renamed to fire after the quota's.
    table = layout.qualified_table
    number, _ = _history_function_names(layout)
    return [
        *_history_functions(layout, _V9_VERSIONED_COLUMNS),
        quota_function_statement(layout),
        f"DROP TRIGGER IF EXISTS {layout.index_name('number_version')} ON {table}",
        f"CREATE OR REPLACE TRIGGER {layout.index_name('version')} "
        f"BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {number}()",
    ]


OWNER_TERMS_VERSION = 15


def _v15_owner_term_statistics(layout: TableLayout) -> list[str]:
    # BM25 weighs a term by how many memories hold it. Counted over the tenant, one user's
    # scores moved with other users' words, so a user bound to one owner could probe what
    # the others wrote. A search within one owner now weighs terms by that owner's memories
    # (term_stats.py keeps these as it keeps the tenant's; PostgresConfig.term_statistics).
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {layout.qualified_owner_terms} (
            tenant    text NOT NULL,
            scope     text NOT NULL,
            scope_id  text NOT NULL,
            term      text NOT NULL,
            df        integer NOT NULL,
            PRIMARY KEY (tenant, scope, scope_id, term)
        )
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {layout.qualified_owner_totals} (
            tenant        text NOT NULL,
            scope         text NOT NULL,
            scope_id      text NOT NULL,
            documents     bigint NOT NULL,
            avg_length    float8 NOT NULL,
            refreshed_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant, scope, scope_id)
        )
        """,
    ]


TENANT_ROLES_VERSION = 16


def _v16_tenant_roles(layout: TableLayout) -> list[str]:
    # Row-level security trusted the pepperpy.tenant setting, which any session may set: a
    # role is now bound to its tenant here (see row_level_security_statements), and a role
    # reads only its own binding.
    table = layout.qualified_tenant_roles
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {table} (
            role_name  text PRIMARY KEY,
            tenant     text NOT NULL,
            bound_at   timestamptz NOT NULL DEFAULT now()
        )
        """,
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {layout.index_name('own_binding')} ON {table}",
        f"CREATE POLICY {layout.index_name('own_binding')} ON {table} "
        "USING (role_name = current_user)",
    ]


BACKFILLS_PER_TABLE_VERSION = 17


def _v17_backfills_per_table(layout: TableLayout) -> list[str]:
    # Backfill positions were kept schema-wide (pepperpy_memory_backfills, one row per table,
    # backfill and tenant), a table row-level security did not cover: a tenant's role, which
    # records its own tenant's progress, could mark another tenant's backfill finished. They
    # now live beside the memories, in a table the tenant policy covers; the positions
    # recorded so far are copied (the schema-wide rows stay, unused, for older processes).
    table = layout.qualified_backfills
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {table} (
            tenant       text NOT NULL,
            name         text NOT NULL,
            position     text[],
            rows_done    bigint NOT NULL DEFAULT 0,
            started_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            finished_at  timestamptz,
            PRIMARY KEY (tenant, name)
        )
        """,
        f"""
        INSERT INTO {table} (tenant, name, position, rows_done, started_at, updated_at,
                             finished_at)
        SELECT tenant, name, position, rows_done, started_at, updated_at, finished_at
        FROM {qualified(layout.schema, BACKFILLS)}
        WHERE table_name = {name_literal(layout.table)}
        ON CONFLICT DO NOTHING
        """,
        # The roles bound to this table's tenants lose what they were granted on the
        # schema-wide table; grant_tenant_statements grants them the new one.
        f"""
        DO $$
        DECLARE bound record;
        BEGIN
            FOR bound IN SELECT b.role_name FROM {layout.qualified_tenant_roles} b
                         JOIN pg_roles r ON r.rolname = b.role_name LOOP
                EXECUTE format('REVOKE ALL ON {qualified(layout.schema, BACKFILLS)} FROM %I',
                               bound.role_name);
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO %I',
                               bound.role_name);
            END LOOP;
        END $$
        """,
    ]


QUOTA_ROOM_VERSION = 18


def _v18_quota_counted_once(layout: TableLayout) -> list[str]:
    # The quota trigger counted the owner's memories on every new row; it now counts once
    # per owner and transaction and keeps the room left in a transaction-local setting.
    return [quota_function_statement(layout)]


CITUS_READY_VERSION = 19


def _v19_history_on_workers(layout: TableLayout) -> list[str]:
    # On a Citus cluster the history trigger fires on a worker, which plans its INSERT into
    # the (distributed) history table itself; Citus 14 deparses a "CASE x WHEN" over a
    # trigger's values wrongly there ("operator does not exist: text = boolean"). The same
    # choice is now written "CASE WHEN x = …", which it reads right.
    return _history_functions(layout, _V9_VERSIONED_COLUMNS)


STATEMENT_VERSIONS_VERSION = 20


def _v20_statement_versions(layout: TableLayout) -> list[str]:
    # Row triggers numbered, recorded and checked each row of a bulk merge on its own: at
    # 10,000 rows the version trigger took 0.56 s, the history insert 0.31 s, the terms 0.20 s
    # and the quota 0.12 s, beside 0.77 s for the insert itself. Such a merge now does that
    # work for all its rows in its own statement (Statements.merge_staging with versions;
    # history.recorded_from_merge) and says so in STATEMENT_VERSIONS_SETTING for its duration;
    # the triggers stand aside then, and stay what every other writer (store, adapters,
    # psql) goes through. Only the WHEN clauses change: nothing is rewritten.
    table = layout.qualified_table
    number, record = _history_function_names(layout)
    setting = "current_setting('{}', true)".format
    return [
        f"CREATE OR REPLACE TRIGGER {layout.index_name('version')} "
        f"BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW WHEN ({ROW_TRIGGERS_ON}) "
        f"EXECUTE FUNCTION {number}()",
        f"CREATE OR REPLACE TRIGGER {layout.index_name('history_insert')} "
        f"AFTER INSERT ON {table} FOR EACH ROW WHEN ({ROW_TRIGGERS_ON}) "
        f"EXECUTE FUNCTION {record}()",
        f"CREATE OR REPLACE TRIGGER {layout.index_name('history_update')} "
        f"AFTER UPDATE ON {table} FOR EACH ROW "
        f"WHEN (OLD.version IS DISTINCT FROM NEW.version AND {ROW_TRIGGERS_ON}) "
        f"EXECUTE FUNCTION {record}()",
        f"""
        CREATE OR REPLACE TRIGGER {layout.index_name("quota")}
        BEFORE INSERT ON {table} FOR EACH ROW
        WHEN (nullif({setting(QUOTA_SETTING)}, '') IS NOT NULL AND {ROW_TRIGGERS_ON})
        EXECUTE FUNCTION {quota_function(layout.schema)}()
        """,
        layout.terms_trigger_statement(),
    ]


HEAP_FILLFACTOR = 70
"""How full a new page of a table whose rows are rewritten in place is filled: the rest is
room for the row's next version on the same page (see _v21_refreshes_in_place). The TTL
refreshes' table; the memory table on a Citus cluster (see _v28_full_pages_on_one_server)."""


def _v21_refreshes_in_place(layout: TableLayout) -> list[str]:
    # A TTL refresh (touch; LangGraph's refresh_on_read on every get and search) changes only
    # expires_at. With a B-tree on expires_at, and pages filled to the brim, every refresh
    # wrote a new row version into every index: the HNSW graph (about 0.5 ms a row at 384
    # dimensions, and a dead graph element until VACUUM), the GIN indexes, the deduplication
    # index's text functions: 0.6-0.8 ms a row. PostgreSQL (16 on) updates a row in place,
    # without touching its indexes (HOT), when only columns of summarizing (BRIN) indexes
    # change and its page has room: the sweep of expired memories reads a BRIN index instead,
    # and new pages keep 30% free. Measured on 10,000 memories: a refresh of 20 rows 11-16 ms
    # -> 1.1-1.6 ms. Pages written before stay full until rewritten (no rewrite here).
    table = layout.qualified_table
    return [
        f"ALTER TABLE {table} SET (fillfactor = {HEAP_FILLFACTOR})",
        f"CREATE INDEX IF NOT EXISTS {layout.index_name('expires_brin_idx')} "
        f"ON {table} USING brin (expires_at)",
        f"DROP INDEX IF EXISTS {layout.qualified_index('expires_idx')}",
    ]


MOMENT_ORDER_VERSION = 22


def _v22_moments_in_version_order(layout: TableLayout) -> list[str]:
    # Two changes to the trigger that numbers versions. Its function now moves a new
    # version's moment past the version before (see _history_functions: on a cluster, of two
    # concurrent writes of one memory the later commit could carry the earlier moment). And
    # it fired for every UPDATE of a row, a TTL refresh's (expires_at alone) included, only
    # to leave the version and history flag as they were: 2-5 us a row, a tenth of a
    # refresh. It now fires on an UPDATE only when one of the three columns it looks at
    # changes (a WHEN clause cannot read OLD in an INSERT trigger: two triggers). The
    # update's trigger sorts after "..._terms", as the single one did (BEFORE triggers
    # fire in name order).
    table = layout.qualified_table
    number, _ = _history_function_names(layout)
    changed = " OR ".join(
        f"OLD.{column} IS DISTINCT FROM NEW.{column}"
        for column in ("updated_at", "version", "in_history")
    )
    return [
        *_history_functions(layout, _V9_VERSIONED_COLUMNS),
        f"CREATE OR REPLACE TRIGGER {layout.index_name('version')} "
        f"BEFORE INSERT ON {table} FOR EACH ROW WHEN ({ROW_TRIGGERS_ON}) "
        f"EXECUTE FUNCTION {number}()",
        f"CREATE OR REPLACE TRIGGER {layout.index_name('version_update')} "
        f"BEFORE UPDATE ON {table} FOR EACH ROW WHEN (({changed}) AND {ROW_TRIGGERS_ON}) "
        f"EXECUTE FUNCTION {number}()",
    ]


def _v23_expiry_refreshes(layout: TableLayout) -> list[str]:
    # A TTL refresh (touch; LangGraph's refresh_on_read on every get and search) rewrote the
    # memory's row to move its expiry: a row of about 2 KB with its vector, locked first
    # (PostgreSQL locks every row an UPDATE touches when the table has BEFORE UPDATE row
    # triggers, as ours has), written in place only while its page had room (LangGraph's
    # stores kept their pages half empty for it), and left alone while a writer held it.
    # A refresh is now a narrow row beside the memory: the later expiry, and the expiry of
    # the memory it extends (refreshed_from). It counts while the memory still has that
    # expiry: every write sets one, so a memory written or deleted since leaves the refresh
    # stale with nothing to invalidate, and the sweep of expired memories deletes stale ones.
    # No foreign key: its check would lock the memory's row, which this table exists to
    # leave alone. On a cluster the table is placed with the memories but stays empty (see
    # TableLayout.expiry_refreshes).
    table = layout.qualified_refreshes
    memories = layout.qualified_table
    owner = ", ".join(IDENTITY_COLUMNS)
    check = layout.qualified_refreshed_function
    policies = "\n".join(
        f"EXECUTE {text_literal(statement)};"
        for statement in _tenant_policy_statements(layout, table)
    )
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {table} (
            tenant          text NOT NULL,
            scope           text NOT NULL,
            scope_id        text NOT NULL,
            key             text NOT NULL,
            refreshed_from  timestamptz NOT NULL,
            expires_at      timestamptz NOT NULL,
            PRIMARY KEY ({owner})
        ) WITH (fillfactor = {HEAP_FILLFACTOR})
        """,
        # Liveness asks this function rather than a subquery: the planner costs a subquery
        # in a filter as if it ran for every row (it runs only for rows past their own
        # expiry), and an owner's exact scan then lost to a graph walk twice as slow.
        f"""
        CREATE OR REPLACE FUNCTION {check}(tenant text, scope text, scope_id text, key text,
                                          expires_at timestamptz, moment timestamptz)
        RETURNS boolean STABLE PARALLEL SAFE COST 1 LANGUAGE sql AS $refreshed$
            SELECT EXISTS (SELECT 1 FROM {table} r WHERE r.tenant = $1 AND r.scope = $2
                           AND r.scope_id = $3 AND r.key = $4 AND r.refreshed_from = $5
                           AND r.expires_at > $6)
        $refreshed$
        """,
        # What the memories have, the refreshes get: the bound roles' grants, the tenant
        # policy (when the memory table has row-level security), the cluster placement. The
        # quota counts refreshed memories as live; on a cluster, where nothing reads the
        # refreshes, it keeps judging rows alone.
        f"""
        DO $$
        DECLARE bound record;
        DECLARE distributed_by text;
        DECLARE placed boolean;
        BEGIN
            FOR bound IN SELECT b.role_name FROM {layout.qualified_tenant_roles} b
                         JOIN pg_roles r ON r.rolname = b.role_name LOOP
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO %I',
                               bound.role_name);
            END LOOP;
            IF (SELECT c.relrowsecurity FROM pg_class c
                WHERE c.oid = {text_literal(memories)}::regclass) THEN
                {policies}
            END IF;
            IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
                EXECUTE 'SELECT column_to_column_name(p.logicalrelid, p.partkey) '
                        'FROM pg_dist_partition p WHERE p.partmethod = ''h'' '
                        'AND p.logicalrelid = $1::regclass'
                    INTO distributed_by USING {text_literal(memories)};
            END IF;
            IF distributed_by IS NOT NULL THEN
                EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_dist_partition p '
                        'WHERE p.logicalrelid = $1::regclass)'
                    INTO placed USING {text_literal(table)};
                IF NOT placed THEN
                    EXECUTE 'SELECT create_distributed_table($1, $2, colocate_with => $3)'
                        USING {text_literal(table)}, distributed_by, {text_literal(memories)};
                END IF;
                EXECUTE {text_literal(quota_function_statement(layout))};
            ELSE
                EXECUTE {text_literal(quota_function_statement(layout, check))};
            END IF;
        END $$
        """,
        # A process of an earlier release would judge refreshed memories expired: sweep them
        # away, or start them anew on a write. It may not write.
        f"DROP TRIGGER IF EXISTS {quote_ident(f'{_GUARD}_before_{PASSAGES_VERSION}')} "
        f"ON {memories}",
        *_old_client_guard(
            layout,
            EXPIRY_REFRESHES_VERSION,
            "per-owner memory identity, passages and TTL refreshes kept beside the memories",
            f"{_GUARD}_before_{EXPIRY_REFRESHES_VERSION}",
        ),
    ]


def _v24_cheaper_terms_and_statistics(layout: TableLayout) -> list[str]:
    # Two costs every bulk write paid for nothing (measured on 10,000 memories of 384
    # dimensions, everything on):
    # - The terms function called the identifier function for every text, and a SQL function
    #   holding a subquery is not inlined: 5 us a call, 48 ms of the merge, though that
    #   function's first test turned almost every text away. The test now runs in the terms
    #   function, which stays inlined: no longer declared STRICT, since PostgreSQL inlines a
    #   strict function only if its body is strict, and a CASE is not. The same terms come
    #   out, NULL for a NULL text or configuration as before (to_tsvector is strict).
    # - ANALYZE (after a bulk load, and whenever autovacuum analyzes the table) computed the
    #   deduplication index's expression, md5 of the normalized text, for every sampled row
    #   and sorted the hashes: 45 of its 120 ms. The look-up through that index compares
    #   hashes for equality, which the planner estimates as selective without them.
    #   Catalog changes only: nothing is rewritten.
    schema = layout.schema
    identifiers = qualified(schema, "pepperpy_identifier_terms")
    return [
        f"""
        CREATE OR REPLACE FUNCTION {terms_function(schema)}(config regconfig, content text)
        RETURNS tsvector IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE LANGUAGE sql AS $terms$
            SELECT to_tsvector(config, content) || CASE
                WHEN content ~ '{_MAY_HOLD_IDENTIFIER}'
                THEN array_to_tsvector({identifiers}(content)) ELSE ''::tsvector END
        $terms$
        """,
        f"ALTER INDEX {layout.qualified_index('dedupe_idx')} ALTER COLUMN 1 SET STATISTICS 0",
    ]


def _v25_refresh_check_not_inlined(layout: TableLayout) -> list[str]:
    # PostgreSQL tries to inline every SQL function a statement calls, parsing and analysing
    # its body at each planning, and gives up on this one (its body holds a subquery) only
    # then. Every read statement names it (liveness), the upsert of a store() three times:
    # 40 us of each search's 0.2 ms of planning, 40 of the upsert's 0.14 ms (scratch
    # EXPLAIN, 10,000 memories). A PL/pgSQL body is never inlined, and costs a call the
    # same (16.5 and 16.8 us a row over 10,000 expired rows). Same arguments and answer.
    table = layout.qualified_refreshes
    return [
        f"""
        CREATE OR REPLACE FUNCTION {layout.qualified_refreshed_function}(
            tenant text, scope text, scope_id text, key text,
            expires_at timestamptz, moment timestamptz)
        RETURNS boolean STABLE PARALLEL SAFE COST 1 LANGUAGE plpgsql AS $refreshed$
        BEGIN
            RETURN EXISTS (SELECT 1 FROM {table} r WHERE r.tenant = $1 AND r.scope = $2
                           AND r.scope_id = $3 AND r.key = $4 AND r.refreshed_from = $5
                           AND r.expires_at > $6);
        END
        $refreshed$
        """,
    ]


def _v26_triggers_planned_once(layout: TableLayout) -> list[str]:
    # The store's sessions plan every statement for its values (plan_cache_mode
    # force_custom_plan: vector searches need it), and a trigger's queries are planned under
    # the session's setting. The version trigger planned its two look-ups (the memory's row,
    # its last version) anew on every write, 0.10 ms of a store()'s 0.5 ms in the database;
    # the quota trigger its key probe and its counts. Each is a primary-key probe or count,
    # planned the same for any values: once per session now, the version trigger 0.03-0.04
    # ms, the quota trigger 0.05-0.09 ms less (scratch EXPLAIN ANALYZE, 10,000 memories).
    # Not where Citus is installed: it cannot plan a distributed query whose parameters a
    # generic plan leaves unknown (distribution.distribute resets the setting).
    generic = _generic_trigger_plans(layout, "SET plan_cache_mode = force_generic_plan")
    return [
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
                {generic}
            END IF;
        END $$
        """
    ]


CURRENT_VECTOR_KEPT_ONCE_VERSION = 27


def _v27_current_vector_kept_once(layout: TableLayout) -> list[str]:
    # Every version in the history repeated its memory's vector, the current one too: 1,536
    # of a version's 2,051 bytes at 384 dimensions, a fifth of a memory's whole footprint,
    # written twice on every store. The current version's vector is the memory row's; its
    # history row now gets it when the version is replaced (or deleted), from the row it
    # was: the vector it had then (an embedding repair or a re-embedding since included).
    # Readers of the history take a current version's vector from the row (see
    # history._version_columns). Rows recorded before keep theirs; nothing is rewritten.
    # A process of an earlier release would replace versions without giving them their
    # vector (its bulk merge records versions itself): it may not write.
    return [
        *_history_functions(layout, _V9_VERSIONED_COLUMNS),
        # Re-created functions lose their settings: planned once again, as version 26 made
        # them (not where Citus is installed).
        *_v26_triggers_planned_once(layout),
        f"DROP TRIGGER IF EXISTS {quote_ident(f'{_GUARD}_before_{EXPIRY_REFRESHES_VERSION}')} "
        f"ON {layout.qualified_table}",
        *_old_client_guard(
            layout,
            CURRENT_VECTOR_KEPT_ONCE_VERSION,
            "per-owner memory identity, passages, TTL refreshes kept beside the memories and "
            "current versions recorded without their vector",
            f"{_GUARD}_before_{CURRENT_VECTOR_KEPT_ONCE_VERSION}",
        ),
    ]


FULL_PAGES_VERSION = 28


def _v28_full_pages_on_one_server(layout: TableLayout) -> list[str]:
    # Schema 21 left 30% of each new page of the memory table free, so that a TTL refresh
    # (expires_at only) could rewrite its row on its page without touching an index (HOT).
    # Since schema 23 one server keeps refreshes beside the rows, and none of the store's own
    # updates can be HOT: each changes updated_at or the vector, both indexed (0 HOT updates
    # in 250 stores over, touches, invalidations and supersessions on a 70% table). The room
    # only cost space, and more than 30%: a memory row at 384 dimensions is about 2.5 kB, and
    # a page filled to 70% holds two instead of three (4,096 bytes a memory against 2,731 in
    # the heap at 10,000 memories). New pages are filled again; pages written before keep
    # their room until rewritten (nothing is rewritten here). Not where Citus is installed:
    # on a cluster a refresh rewrites the row (distribution.distribute gives a table it
    # moves there the same 70%).
    return [
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
                ALTER TABLE {layout.qualified_table} RESET (fillfactor);
            END IF;
        END $$
        """
    ]


def _v29_one_text_vector(layout: TableLayout) -> list[str]:
    # Every memory's text was parsed twice on every write: into the generated tsv column
    # (the words search of the first releases) and into its terms (migration 6: the same
    # words, with the identifiers in the text). Both were stored and GIN-indexed. At 10,000
    # memories of 384 dimensions the column cost a tenth of a millisecond a row to compute
    # (~95 of a bulk insert's ~180 ms) and ~120 bytes a row, which made the row ~2.1 kB:
    # three to a page instead of four (2,731 bytes of table a memory against 2,048), and its
    # index 85 more. Word searches read the terms; a memory the terms backfill has not
    # reached yet is parsed when searched, as long as the backfill runs (search_sql). Both
    # drops are catalog changes: nothing is rewritten (the column's bytes stay in each row
    # until the row is next written).
    return [
        f"DROP INDEX IF EXISTS {layout.qualified_index('tsv_idx')}",
        f"ALTER TABLE {layout.qualified_table} DROP COLUMN IF EXISTS tsv",
    ]


def _generic_trigger_plans(layout: TableLayout, action: str) -> str:
    """PL/pgSQL: ``ALTER FUNCTION … {action}`` for the version and quota trigger functions."""
    number, _ = _history_function_names(layout)
    return " ".join(
        f"EXECUTE {text_literal(f'ALTER FUNCTION {function}() {action}')};"
        for function in (number, quota_function(layout.schema))
    )


def reset_trigger_plans(layout: TableLayout) -> str:
    """The statement that gives the version and quota trigger functions the session's
    plan_cache_mode again (a table going onto a Citus cluster: see
    _v26_triggers_planned_once)."""
    return f"DO $$ BEGIN {_generic_trigger_plans(layout, 'RESET plan_cache_mode')} END $$"


Migration = Callable[[TableLayout], list[str]]

MIGRATIONS: list[Migration] = [
    _v1_table,
    _v2_small_gin_pending_lists,
    _v3_tenant_column,
    _v4_owner_identity,
    _v5_passages,
    _v6_terms,
    _v7_vectors_inline,
    _v8_history,
    _v9_importance_and_access,
    _v10_dedupe,
    _v11_quota,
    _v12_dedupe_calendar_and_negation,
    _v13_bounded_quota_count,
    _v14_ordered_writers,
    _v15_owner_term_statistics,
    _v16_tenant_roles,
    _v17_backfills_per_table,
    _v18_quota_counted_once,
    _v19_history_on_workers,
    _v20_statement_versions,
    _v21_refreshes_in_place,
    _v22_moments_in_version_order,
    _v23_expiry_refreshes,
    _v24_cheaper_terms_and_statistics,
    _v25_refresh_check_not_inlined,
    _v26_triggers_planned_once,
    _v27_current_vector_kept_once,
    _v28_full_pages_on_one_server,
    _v29_one_text_vector,
]
"""Append-only. Position i (0-based) is schema version i + 1."""

SCHEMA_VERSION = len(MIGRATIONS)
