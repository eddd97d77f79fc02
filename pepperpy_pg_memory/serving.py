"""What the long-lived servers (the MCP server, the memory browser) share about where they
listen: whether an interface is loopback, and the ``Host`` values a client sends for it."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback", "host_names"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_names(host: str, port: int) -> set[str]:
    """The ``Host`` header values that name a server listening on ``host``:``port`` (on
    loopback, the loopback names too); anything else is a rebinding attempt."""
    bare = host.strip("[]")
    if bare == "::1":
        names = {"[::1]", "localhost"}
    elif is_loopback(bare):
        names = {bare, "127.0.0.1", "localhost"}
    else:
        names = {f"[{bare}]" if ":" in bare else bare}
    return {f"{name}:{port}" for name in names}
