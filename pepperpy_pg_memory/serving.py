"""What the long-lived servers (the MCP server, the memory browser) share about where they
listen: whether an interface is loopback, and the ``Host`` values a client sends for it."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

__all__ = ["is_loopback", "host_names", "base_url", "serve_http"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _in_url(host: str) -> str:
    """``host`` as a URL writes it (an IPv6 address in brackets)."""
    bare = host.strip("[]")
    return f"[{bare}]" if ":" in bare else bare


def base_url(host: str, port: int) -> str:
    """``http://host:port``: where a server listening on ``host``:``port`` is opened."""
    return f"http://{_in_url(host)}:{port}"


def host_names(host: str, port: int) -> set[str]:
    """The ``Host`` header values that name a server listening on ``host``:``port`` (on
    loopback, the loopback names too); anything else is a rebinding attempt."""
    bare = host.strip("[]")
    if bare == "::1":
        names = {"[::1]", "localhost"}
    elif is_loopback(bare):
        names = {bare, "127.0.0.1", "localhost"}
    else:
        names = {_in_url(bare)}
    return {f"{name}:{port}" for name in names}


async def serve_http(
    app: Any, host: str, port: int, *, lifespan: Literal["on", "off"] = "on"
) -> None:
    """Serve the ASGI ``app`` until the process is stopped: uvicorn (the servers' extras
    bring it), warnings only and no access log — addresses can carry a token."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan=lifespan
    )
    await uvicorn.Server(config).serve()
