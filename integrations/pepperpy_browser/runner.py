"""``pepperpy-memory ui``: the memory browser on a local port."""

from __future__ import annotations

import sys
from typing import Any

from pepperpy_pg_memory import MemoryConfigurationError, PostgresConfig, PostgresStorage
from pepperpy_pg_memory.serving import base_url, host_names, is_loopback, serve_http

from .app import create_app, what_it_shows

__all__ = ["serve"]


async def serve(
    config: PostgresConfig, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
) -> int:
    """Serve the browser until the process is stopped."""
    if token is not None and not token.strip():
        raise MemoryConfigurationError("--token is empty", field="token")
    if not is_loopback(host) and not token:
        raise MemoryConfigurationError(
            f"--host {host} would show the memories to other machines: use 127.0.0.1, or set "
            "--token (then every request needs it)",
            field="host",
        )
    if not 0 < port < 65536:
        raise MemoryConfigurationError(f"--port {port} is not a port", field="port")
    storage = PostgresStorage[str, Any](config)
    await storage.start()
    try:
        app = create_app(storage, hosts=host_names(host, port), token=token)
        suffix = f"/?token={token}" if token else "/"
        # Printed, not logged: the CLI logs errors only, and this line is how a user finds
        # the page (and which database it shows).
        print(
            f"Memory browser on {base_url(host, port)}{suffix} — the memories of "
            f"{what_it_shows(config)}. Stop it with Ctrl+C.",
            file=sys.stderr,
            flush=True,
        )
        await serve_http(app, host, port, lifespan="off")
        return 0
    finally:
        await storage.close()
