"""Tenants in the database itself: row-level security's checks at start, and roles bound to
one tenant each.

PostgreSQL exempts superusers and BYPASSRLS roles from every policy, and a session may set
``pepperpy.tenant`` to anything; so a tenant boundary that holds for SQL run outside this
library needs (1) a role the policies restrict and (2) a tenant the session cannot choose. The
second is a binding: a row of ``<table>_tenant_roles`` naming the role's tenant, which the
policy reads before the setting (see :func:`~.schema.session_tenant`). Bindings and grants are
made by the tables' owner (:func:`grant_tenant`); the bound role can read only its own.
"""

from __future__ import annotations

import asyncpg

from .errors import MemoryConfigurationError, MemoryValidationError
from .limits import MAX_TENANT_BYTES
from .schema import (
    TableLayout,
    bind_tenant_role,
    bound_role_policy_statements,
    grant_tenant_statements,
    row_security,
    tenant_bindings,
)
from .sql import Query, Session
from .values import check_bytes

__all__ = [
    "check_row_level_security_applies",
    "check_binding",
    "grant_tenant",
    "ensure_application_role",
    "APPLICATION_ROLE",
]

APPLICATION_ROLE = "pepperpy_app"
"""The role the embedded server's stores connect as under row-level security."""

_MAX_ROLE_BYTES = 63  # NAMEDATALEN - 1: longer names are cut, which would name another role


async def _role(session: Session, name: str | None) -> asyncpg.Record | None:
    """The role ``name`` (None: the session's) as ``role`` and, when PostgreSQL's policies do
    not restrict it, why as ``exempt`` ("a superuser", "a BYPASSRLS role"); None if there is
    no such role."""
    role: asyncpg.Record | None = await session.fetchrow(
        Query(
            "SELECT rolname::text AS role, CASE WHEN rolsuper THEN 'a superuser' "
            "WHEN rolbypassrls THEN 'a BYPASSRLS role' END AS exempt FROM pg_roles "
            "WHERE rolname = coalesce($1::name, current_user)",
            (name,),
        )
    )
    return role


async def check_row_level_security_applies(session: Session) -> None:
    """Refuse row-level security that would restrict nothing: PostgreSQL exempts superusers
    and BYPASSRLS roles from every policy, so the tenant boundary would hold only inside this
    library, not for SQL run with the same credentials."""
    row = await _role(session, None)
    if row is not None and row["exempt"]:
        raise MemoryConfigurationError(
            f"row_level_security=True, but the store connects as {row['role']!r}, "
            f"{row['exempt']}, "
            "which PostgreSQL's policies do not restrict: connect as an ordinary role (see "
            "docs/multi-tenant-deployments.md)",
            field="row_level_security",
        )


async def check_binding(session: Session, layout: TableLayout, tenant: str) -> None:
    """Refuse a store whose role is bound to another tenant than the one it is configured
    for: every row it wrote would fail the policy's check, every read would find nothing."""
    row = await session.fetchrow(
        Query(
            f"SELECT current_user AS role, b.tenant FROM {layout.qualified_tenant_roles} b "
            "WHERE b.role_name = current_user"
        )
    )
    if row is not None and row["tenant"] != tenant:
        raise MemoryConfigurationError(
            f"the store connects as role {row['role']!r}, which is bound to tenant "
            f"{row['tenant']!r}, but is configured for tenant {tenant!r}",
            field="tenant",
        )


def _checked_role(role: str) -> str:
    if not isinstance(role, str) or not role or "\x00" in role:
        raise MemoryValidationError("role must be a non-empty string without NUL characters")
    check_bytes(role, _MAX_ROLE_BYTES, "role")
    return role


async def grant_tenant(layout: TableLayout, role: str, tenant: str, session: Session) -> None:
    """Bind ``role`` to ``tenant`` and grant it what a store needs, in one transaction. Run
    by the tables' owner; the role must exist and be one that policies restrict."""
    _checked_role(role)
    if not isinstance(tenant, str) or not tenant:
        raise MemoryValidationError("tenant must be a non-empty string")
    check_bytes(tenant, MAX_TENANT_BYTES, "tenant")
    found = await _role(session, role)
    if found is None:
        raise MemoryValidationError(f"role {role!r} does not exist (CREATE ROLE it first)")
    if found["exempt"]:
        raise MemoryValidationError(
            f"role {role!r} is exempt from row-level security ({found['exempt']}): "
            "binding it to a tenant would restrict nothing"
        )
    async with session.transaction():
        for statement in grant_tenant_statements(layout, role):
            await session.execute(Query(statement))
        bind = bind_tenant_role(layout, role, tenant)
        await session.execute(bind)
        if layout.distributed and (await row_security(session, layout.qualified_table))[0]:
            # On a cluster the binding is a policy of its own, and the tenant policy names
            # the roles it leaves out (see schema.cluster_row_level_security_statements;
            # a store that turns row-level security on later makes them from the bindings).
            roles = [bound for bound, _ in await tenant_bindings(session, layout)]
            for statement in bound_role_policy_statements(layout, role, tenant, roles):
                await session.execute(Query(statement))


async def ensure_application_role(session: Session, layout: TableLayout) -> None:
    """On a server of our own (the embedded one), as its superuser: the ordinary role that
    stores with row-level security connect as, with the grants of a store's tables, unbound
    (it acts for the tenant its sessions set, which is each store's own)."""
    async with session.transaction():
        # Two processes starting at once would both create the role.
        await session.execute(
            Query("SELECT pg_advisory_xact_lock(hashtext($1))", (APPLICATION_ROLE,))
        )
        exists = await session.fetchval(
            Query("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", (APPLICATION_ROLE,))
        )
        if not exists:
            # The embedded server admits local connections without a password.
            await session.execute(
                Query(f"CREATE ROLE {APPLICATION_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE")
            )
        for statement in grant_tenant_statements(layout, APPLICATION_ROLE):
            await session.execute(Query(statement))
