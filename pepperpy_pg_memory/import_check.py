"""An import's first pass: every line of a backup checked before anything is written.

A backup is applied all or nothing as far as its content can tell: a line that is not a
memory, a memory that may not be stored, a history line that would clash with the history
this table already holds, or an owner pushed over its quota means nothing of the file is
written, and the report names every bad line. (What only the server can refuse, while
writing, is still reported by line; batches already written then stay.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TextIO

from . import backup
from .database import Runner
from .errors import MemoryQuotaError, MemoryValidationError
from .history import HistoryStatements
from .items import PendingWrite
from .queries import Statements
from .types import MANAGED_FIELD, Identity

__all__ = ["ImportPlan", "check_import"]

# Identities looked up in the database per statement.
_LOOKUP_BATCH = 5_000


@dataclass
class ImportPlan:
    """What the first pass learned of a file: how to read it the second time."""

    with_embeddings: bool = True
    with_history: bool = False
    memories: dict[Identity, tuple[int, datetime | None, bool]] = field(default_factory=dict)
    """Per memory line's identity: its line number, its ``updated_at`` and whether it takes
    room in its owner's quota (live and not an adapter's record)."""
    versions: list[tuple[int, Identity, int, datetime]] = field(default_factory=list)
    """Per history line: its line number, identity, version and moment."""
    expired: set[int] = field(default_factory=set)
    """Memory lines that expired since the export: reported, not restored, and no reason to
    refuse the rest of the file (a backup ages)."""
    refused: int = 0
    """Lines that mean nothing of the file may be written."""


async def check_import(
    stream: TextIO,
    spool: TextIO,
    report: backup.ImportReport,
    *,
    dimension: int,
    prepare: Callable[[backup.Restored], PendingWrite],
    check_version: Callable[[backup.RestoredVersion, bool], None],
    runner: Runner,
    statements: Statements,
    history: HistoryStatements,
    tenant: str,
    quota: int | None,
) -> ImportPlan:
    """Read ``stream`` to its end, copying it to ``spool`` for the second pass, and record in
    ``report`` every line that must not be written; then check the file against the table."""
    plan = ImportPlan()
    now = datetime.now(timezone.utc)
    for number, line in enumerate(stream, start=1):
        spool.write(line)
        if not line.strip():
            continue
        if number == 1:
            found = backup.read_header(line)
            if found is not None:
                plan.with_embeddings = found.get("dimension") == dimension
                plan.with_history = found.get("history") is True
                continue
        try:
            restored = backup.parse_line(line, plan.with_embeddings)
        except MemoryValidationError as exc:
            report.skipped += 1
            report.errors.append((number, str(exc)))
            plan.refused += 1
            continue
        try:
            if isinstance(restored, backup.RestoredVersion):
                check_version(restored, plan.with_history)
                identity = Identity(restored.scope, restored.scope_id, restored.key)
                plan.versions.append((number, identity, restored.version, restored.at))
                continue
            write = prepare(restored)
        except MemoryValidationError as exc:
            report.failed += 1
            report.errors.append((number, str(exc)))
            expires_at = getattr(restored, "fields", {}).get("expires_at")
            if isinstance(expires_at, datetime) and expires_at <= now:
                plan.expired.add(number)
            else:
                plan.refused += 1
            continue
        live = write.expires_at is None or write.expires_at > now
        takes_room = live and MANAGED_FIELD not in write.metadata
        plan.memories[write.identity] = (number, restored.updated_at, takes_room)
    if plan.refused:
        return plan
    if plan.with_history:
        await _check_histories(plan, report, runner, history, tenant)
    if quota is not None and not plan.refused:
        await _check_quota(plan, runner, statements, tenant, quota)
    return plan


async def _check_histories(
    plan: ImportPlan,
    report: backup.ImportReport,
    runner: Runner,
    history: HistoryStatements,
    tenant: str,
) -> None:
    """A memory this table already knows may come back only with the history it has here
    (importing a file twice changes nothing); a version line for it that this table does not
    hold would clash with the versions its next writes number."""
    wanted = list(dict.fromkeys([*plan.memories, *(v[1] for v in plan.versions)]))
    known: dict[Identity, tuple[datetime | None, set[tuple[int, datetime]]]] = {}
    for batch in _lookup_batches(wanted, by_owner=runner.distributed):
        query = history.recorded_here(tenant, batch)
        for row in await runner.fetch("import", query):
            recorded = set(zip(row["versions"], row["moments"], strict=True))
            if row["updated_at"] is not None or recorded:
                identity = Identity(row["scope"], row["scope_id"], row["key"])
                known[identity] = (row["updated_at"], recorded)
    clash = (
        "is already stored here with another history: import with history into a table without it"
    )
    for number, identity, version, at in plan.versions:
        here = known.get(identity)
        if here is not None and (version, at) not in here[1]:
            plan.refused += 1
            report.failed += 1
            report.errors.append((number, f"memory {identity.key!r} {clash}"))
    for identity, (number, updated_at, _) in plan.memories.items():
        here = known.get(identity)
        if here is not None and here[0] is not None and here[0] != updated_at:
            plan.refused += 1
            report.failed += 1
            report.errors.append((number, f"memory {identity.key!r} {clash}"))
    report.errors.sort()


async def _check_quota(
    plan: ImportPlan, runner: Runner, statements: Statements, tenant: str, quota: int
) -> None:
    """Refuse the file when an owner would hold more than ``quota`` memories after it."""
    adding: Counter[tuple[str, str]] = Counter()
    taking_room = [identity for identity, (_, _, room) in plan.memories.items() if room]
    for identity in taking_room:
        adding[(identity.scope, identity.scope_id)] += 1
    if not adding:
        return
    over = []
    for start in range(0, len(taking_room), _LOOKUP_BATCH):
        batch = taking_room[start : start + _LOOKUP_BATCH]
        for row in await runner.fetch("import", statements.replaced_live(tenant, batch)):
            adding[(row["scope"], row["scope_id"])] -= 1
    owners = list(adding)
    rows = await runner.fetch("import", statements.owners_held(tenant, owners))
    held = {(row["scope"], row["scope_id"]): row["held"] for row in rows}
    for owner, count in adding.items():
        total = held.get(owner, 0) + count
        if count > 0 and total > quota:
            over.append(f"{owner[0]}:{owner[1]} would hold {total}")
    if over:
        raise MemoryQuotaError(
            f"import: the most memories allowed per owner is {quota}, and after this file "
            f"{', '.join(over[:10])}{' …' if len(over) > 10 else ''}; nothing was written"
        )


def _lookup_batches(identities: list[Identity], *, by_owner: bool) -> list[list[Identity]]:
    """``identities`` in look-up batches of at most :data:`_LOOKUP_BATCH`; on a cluster,
    one owner's each (a look-up of one owner runs on that owner's node)."""
    groups: list[list[Identity]] = [identities]
    if by_owner:
        owners: dict[str, list[Identity]] = {}
        for identity in identities:
            owners.setdefault(identity.scope_id, []).append(identity)
        groups = list(owners.values())
    return [
        group[start : start + _LOOKUP_BATCH]
        for group in groups
        for start in range(0, len(group), _LOOKUP_BATCH)
    ]
