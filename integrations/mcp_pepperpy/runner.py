"""``pepperpy-memory mcp``: the MCP server on stdio, or on streamable HTTP.

On stdio, stdout carries protocol messages only: anything else written there (a first start
of the embedded server, a library's notice) would break the host's parser, so the store starts
with stdout pointed at stderr, and logs always go to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from pepperpy_pg_memory import MemoryConfigurationError, PostgresConfig, PostgresStorage
from pepperpy_pg_memory.serving import base_url, is_loopback, serve_http

from .server import bearer_token_guard, create_server, transport_security

__all__ = ["serve", "parse_http_address"]


def parse_http_address(value: str, token: str | None) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port, refusing an interface
    other than loopback unless a token guards it."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MemoryConfigurationError(f"--http takes HOST:PORT, not {value!r}", field="http")
    host = host.strip("[]") or "127.0.0.1"
    if not is_loopback(host) and not token:
        raise MemoryConfigurationError(
            f"--http {value} would accept connections from other machines: bind it to "
            "127.0.0.1, or set --token (then every request needs it as a bearer token)",
            field="http",
        )
    return host, int(port_text)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr (child processes included) while the block runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


async def serve(
    config: PostgresConfig,
    *,
    user: str | None = None,
    allow_any_user: bool = False,
    http: str | None = None,
    token: str | None = None,
) -> int:
    """Run the server until the host disconnects (stdio) or the process is stopped (HTTP)."""
    address = parse_http_address(http, token) if http is not None else None
    if token is not None and not token.strip():
        raise MemoryConfigurationError("--token is empty", field="token")
    storage = PostgresStorage[str, Any](config)
    with _stdout_to_stderr():
        await storage.start()
    try:
        with _stdout_to_stderr():
            # The first recall would load the model: load it now, before the host waits.
            await storage.query_vector("warm up")
        server = create_server(storage, user=user, allow_any_user=allow_any_user)
        if address is None:
            await server.run_stdio_async()
            return 0
        host, port = address
        app: Any = server.streamable_http_app(
            transport_security=transport_security(host, port), host=host
        )
        if token:
            app = bearer_token_guard(app, token)
        # Printed (on stderr), not logged: the CLI logs errors only.
        print(f"MCP server on {base_url(host, port)}/mcp", file=sys.stderr, flush=True)
        await serve_http(app, host, port)  # its lifespan runs the MCP session manager
        return 0
    finally:
        await storage.close()
