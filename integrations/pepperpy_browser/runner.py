"""``pepperpy-memory ui``: the memory browser on a local port."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from pepperpy_pg_memory import MemoryConfigurationError, PostgresConfig, PostgresStorage

from .app import create_app

__all__ = ["serve", "allowed_hosts"]

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> set[str]:
    """The ``Host`` values a browser sends for this server: the name it listens on (the
    loopback names when it is loopback), with the port."""
    names = {host}
    if _is_loopback(host):
        names |= {"127.0.0.1", "localhost"}
    if host == "::1":
        names = {"[::1]", "localhost"}
    return {f"{name}:{port}" for name in names}


async def serve(
    config: PostgresConfig, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
) -> int:
    """Serve the browser until the process is stopped."""
    if token is not None and not token.strip():
        raise MemoryConfigurationError("--token is empty", field="token")
    if not _is_loopback(host) and not token:
        raise MemoryConfigurationError(
            f"--host {host} would show the memories to other machines: use 127.0.0.1, or set "
            "--token (then every request needs it)",
            field="host",
        )
    if not 0 < port < 65536:
        raise MemoryConfigurationError(f"--port {port} is not a port", field="port")
    import uvicorn

    storage = PostgresStorage[str, Any](config)
    await storage.start()
    try:
        app = create_app(storage, hosts=allowed_hosts(host, port), token=token)
        shown = f"[{host}]" if ":" in host else host
        suffix = f"/?token={token}" if token else "/"
        logger.warning("memory browser on http://%s:%d%s", shown, port, suffix)
        server_config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        await uvicorn.Server(server_config).serve()
        return 0
    finally:
        await storage.close()
