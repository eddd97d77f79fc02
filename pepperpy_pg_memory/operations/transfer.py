"""Backups: export a store's memories (and their history) to JSON lines, import them back.

An import reads the file twice: :func:`~pepperpy_pg_memory.import_check.check_import` checks
every line and spools the file, and only a file with no bad line is written, in batches.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import tempfile
import typing
from collections.abc import Iterator
from functools import partial
from typing import Any, TextIO, TypeVar

from .. import backup
from ..bulk import write_restored
from ..errors import MemoryValidationError
from ..history import IMPORTED_COLUMNS, OPERATIONS, check_note, settings_query
from ..import_check import ImportPlan, check_import
from ..items import STORE_DEFAULTS, PendingWrite, Scope, owner
from ..models import MemoryEntry
from ..schema import IMPORTING_SETTING
from ..sql import Query
from ..types import DOCUMENT_FIELD, MANAGED_FIELD, Identity, MemoryIndex, ProgressCallback
from ..values import encode_checked_json, to_json_value
from ..vectors import content_hash
from . import writing
from .reads import scan
from .rows import identity_of, identity_of_entry
from .started import Started

__all__ = ["export_jsonl", "import_jsonl"]

V = TypeVar("V")

EXPORT_PAGE = 500
"""Memories an export writes per look-up of their passages."""
SCAN_PAGE = 1_000
"""Memories an export reads per page."""


async def export_jsonl(
    started: Started[V],
    out: TextIO | str | os.PathLike[str],
    *,
    scope: Scope = None,
    scope_id: str | None = None,
    with_embeddings: bool = False,
    with_history: bool = False,
) -> int:
    """``PostgresStorage.export_jsonl``: the header, then the memories a keyset page at a
    time with their passages, then (``with_history``) every version; how many memories."""
    count = 0
    page: builtins.list[MemoryEntry[V]] = []

    async def write_page(stream: TextIO) -> None:
        nonlocal count
        passages = await passages_of(started, page)
        for entry in page:
            identity = identity_of_entry(entry)
            line = backup.line_of(
                entry, started.tenant, to_json_value(entry.value), passages.get(identity)
            )
            stream.write(line + "\n")
        count += len(page)
        page.clear()

    with _opened(out, "w") as stream:
        stream.write(backup.header(started.layout.dimension, with_embeddings, with_history) + "\n")
        restriction = started.restriction(scope, scope_id, include_invalid=True)
        async for entry in scan(started, restriction, SCAN_PAGE, with_embeddings):
            page.append(entry)
            if len(page) >= EXPORT_PAGE:
                await write_page(stream)
        await write_page(stream)
        if with_history:
            await export_history(started, stream, scope, scope_id, with_embeddings)
    return count


async def export_history(
    started: Started[V], stream: TextIO, scope: Scope, scope_id: str | None, with_embeddings: bool
) -> None:
    owner_scope, owner_id = owner(scope, scope_id, started.config.default_scope_id)
    owned = None if owner_scope is None else (owner_scope.value, owner_id or "")
    after: tuple[str, str, str, int] | None = None
    while True:
        rows = await started.database.reading.fetch(
            "export", started.history.page(started.tenant, owned, after, EXPORT_PAGE)
        )
        for row in rows:
            version = started.rows.version(row, embedding=with_embeddings)
            line = backup.version_line(version, started.tenant, row["value"])
            stream.write(line + "\n")
        if len(rows) < EXPORT_PAGE:
            return
        last = rows[-1]
        after = (last["scope"], last["scope_id"], last["key"], last["version"])


async def passages_of(
    started: Started[V], entries: builtins.list[MemoryEntry[V]]
) -> dict[Identity, builtins.list[str]]:
    if not entries:
        return {}
    identities = [identity_of_entry(entry) for entry in entries]
    rows = await started.database.reading.fetch(
        "export", started.statements.passages_of(started.tenant, identities)
    )
    return {identity_of(row): builtins.list(row["passages"]) for row in rows}


async def import_jsonl(
    started: Started[V],
    source: TextIO | str | os.PathLike[str],
    *,
    batch_size: int = 500,
    progress: ProgressCallback | None = None,
) -> backup.ImportReport:
    """``PostgresStorage.import_jsonl``: check the whole file (spooling it), then, if no
    line is refused, write it in batches of ``batch_size``."""
    report = backup.ImportReport()
    with (
        _opened(source, "r") as stream,
        tempfile.TemporaryFile("w+", encoding="utf-8") as spool,
    ):
        plan = await check_import(
            stream,
            spool,
            report,
            dimension=started.layout.dimension,
            prepare=partial(prepare_restored, started),
            check_version=partial(check_imported_version, started),
            runner=started.database.reading,
            statements=started.statements,
            history=started.history,
            tenant=started.tenant,
            quota=started.config.max_memories_per_owner,
        )
        if plan.refused:
            return report  # nothing written
        spool.seek(0)
        await apply_import(started, spool, plan, report, batch_size, progress)
    return report


def prepare_restored(started: Started[V], restored: backup.Restored) -> PendingWrite:
    """An imported memory line as a write, checked like any other."""
    check_tenant(started, restored.tenant)
    # A backup holds the adapters' records as they were (an import is the operator's
    # door, not a user's).
    write = started.prepare(
        **{**STORE_DEFAULTS, **restored.fields},
        managed_by=(restored.fields.get("metadata") or {}).get(MANAGED_FIELD),
        document_of=(restored.fields.get("metadata") or {}).get(DOCUMENT_FIELD),
    )
    for name, value in restored.validity.items():
        setattr(write, name, value)
    return write


async def apply_import(
    started: Started[V],
    spool: TextIO,
    plan: ImportPlan,
    report: backup.ImportReport,
    batch_size: int,
    progress: ProgressCallback | None,
) -> None:
    """The second pass: write a checked file's memories and versions in batches;
    ``progress(memories written, memories to write)`` after each batch."""
    pending: builtins.list[tuple[int, PendingWrite, backup.Restored]] = []
    versions: builtins.list[backup.RestoredVersion] = []
    total = sum(1 for line, _, _ in plan.memories.values() if line not in plan.expired)
    done = 0
    for number, line in enumerate(spool, start=1):
        if not line.strip() or number in plan.expired:
            continue
        if number == 1 and backup.read_header(line) is not None:
            continue
        restored = backup.parse_line(line, plan.with_embeddings)
        if isinstance(restored, backup.RestoredVersion):
            versions.append(restored)
            if len(versions) >= batch_size:
                report.versions += await record_versions(started, versions)
            continue
        pending.append((number, prepare_restored(started, restored), restored))
        if len(pending) >= batch_size:
            done += len(pending)
            await restore_batch(started, pending, report, plan.with_history)
            if progress is not None and total:
                progress(min(done, total), total)
    await restore_batch(started, pending, report, plan.with_history)
    report.versions += await record_versions(started, versions)
    if report.versions:
        await started.database.execute_all(
            "import",
            [importing(started), *started.history.after_import(started.tenant)],
            timeout=started.config.maintenance_timeout,
        )
    if progress is not None and total:
        progress(total, total)


def check_tenant(started: Started[V], tenant: str) -> None:
    """An imported line must be of this store's tenant."""
    if tenant != started.tenant:
        raise MemoryValidationError(
            f"belongs to tenant {tenant!r}; this store acts for {started.tenant!r}"
        )


def check_imported_version(
    started: Started[V], restored: backup.RestoredVersion, with_history: bool
) -> None:
    """A history line's fields checked like a memory's: the same rules and limits, and
    an operation a version may record."""
    if not with_history:
        raise MemoryValidationError("a history line in an export whose header has none")
    check_tenant(started, restored.tenant)
    if restored.operation not in OPERATIONS:
        raise MemoryValidationError(
            f"operation {restored.operation!r} is not one a version records "
            f"({', '.join(sorted(OPERATIONS))})"
        )
    if restored.version < 1:
        raise MemoryValidationError("a version number starts at 1")
    check_note(restored.actor, "actor")
    check_note(restored.reason, "reason")
    metadata = restored.metadata
    started.prepare(
        restored.key,
        restored.value,
        type=restored.type,
        scope=restored.scope,
        scope_id=restored.scope_id or None,
        indices=restored.indices,
        metadata=metadata,
        managed_by=metadata.get(MANAGED_FIELD) if isinstance(metadata, dict) else None,
        document_of=metadata.get(DOCUMENT_FIELD) if isinstance(metadata, dict) else None,
        ttl=None,
        expires_at=None,
        text=restored.text,
        importance=restored.importance,
    )
    if restored.embedding is not None:
        started.vectors.check(restored.embedding)


async def record_versions(
    started: Started[V], versions: builtins.list[backup.RestoredVersion]
) -> int:
    """Record imported versions (emptying ``versions``), embedding the texts of those
    that came without a vector, so that semantic reads as of a moment find them;
    returns how many."""
    if not versions:
        return 0
    unembedded = [
        v for v in versions if v.embedding is None and MemoryIndex.SEMANTIC.value in v.indices
    ]
    vectors = await started.vectors.embed_cached([v.text for v in unembedded])
    embedded = dict(zip(map(id, unembedded), vectors, strict=True))
    rows = []
    for version in versions:
        columns = {
            **vars(version),
            "value": encode_checked_json(to_json_value(version.value)),
            "content": version.text,
            "content_hash": content_hash(version.text),
            "memory_type": version.type,
            "metadata": to_json_value(version.metadata, "metadata"),
            "embedding": embedded.get(id(version), version.embedding),
        }
        rows.append(tuple(columns[name] for name in IMPORTED_COLUMNS))
    await started.database.executemany(
        "import",
        started.history.insert_version().for_each(rows),
        timeout=started.config.maintenance_timeout,
    )
    count = len(versions)
    versions.clear()
    return count


def importing(started: Started[Any]) -> Query:
    """What tells the history triggers that the transaction imports versions (they record
    none of their own): on a cluster, where they fire on the workers, by SET LOCAL."""
    return settings_query({IMPORTING_SETTING: "on"}, started.layout.distributed)


async def restore_batch(
    started: Started[V],
    pending: builtins.list[tuple[int, PendingWrite, backup.Restored]],
    report: backup.ImportReport,
    with_history: bool = False,
) -> None:
    """Write a batch of restored memories in one transaction (emptying ``pending``); if the
    server refuses one, each is written alone so that the report names the line. With
    ``with_history`` the memories keep their versions: the file's history lines record
    them (see :func:`record_versions`)."""
    if not pending:
        return
    await writing.plan_embeddings(started, [write for _, write, _ in pending])
    template = started.statements.restore_one(with_version=with_history)

    def row(write: PendingWrite, restored: backup.Restored) -> tuple[Any, ...]:
        moments: tuple[Any, ...] = (started.tenant, restored.created_at, restored.updated_at)
        if with_history:
            moments += (restored.version,)
        return (*write.record(), *moments)

    def restore(batch: builtins.list[tuple[int, PendingWrite, backup.Restored]]) -> Any:
        writes = [write for _, write, _ in batch]
        return partial(
            write_restored,
            started.statements,
            started.tenant,
            template.for_each(row(w, r) for _, w, r in batch),
            [w.identity for w in writes],
            writing.passage_rows(started, writes),
            {w.identity: r.reads for _, w, r in batch if r.reads is not None},
            importing(started) if with_history else None,
        )

    identities = [write.identity for _, write, _ in pending]
    before = await _states(started, identities)
    written: builtins.list[Identity] = []
    try:
        await started.database.run("import", restore(pending))
        written = identities
    except MemoryValidationError:
        for entry in pending:
            number = entry[0]
            try:
                await started.database.run("import", restore([entry]))
                written.append(entry[1].identity)
            except MemoryValidationError as exc:
                report.failed += 1
                report.errors.append((number, str(exc)))
    report.stored += len(written)
    if before:
        after = await _states(started, [i for i in written if i in before])
        report.unchanged += sum(1 for i, state in after.items() if before[i] == state)
    started.term_stats.note_writes(len(pending), [write.owner for _, write, _ in pending])
    pending.clear()


async def _states(started: Started[V], identities: builtins.list[Identity]) -> dict[Identity, str]:
    """The state digest of each of ``identities`` that is stored (see
    :meth:`Statements.memory_states`)."""
    if not identities:
        return {}
    query = started.statements.memory_states(started.tenant, identities)
    rows = await started.database.fetch("import", query)
    return {identity_of(row): row["state"] for row in rows}


@contextlib.contextmanager
def _opened(target: TextIO | str | os.PathLike[str], mode: str) -> Iterator[TextIO]:
    """A text stream for ``target``: a path is opened (and closed) here, a stream is used as
    it is."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, mode, encoding="utf-8") as stream:
            yield typing.cast(TextIO, stream)
    else:
        yield target
