"""pepperpy-pg-memory as a Model Context Protocol server: the same memories for any agent
host that speaks MCP (``pepperpy-memory mcp``). Install with
``pip install 'pepperpy-pg-memory[mcp]'``."""

try:
    import mcp.server.mcpserver  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "mcp_pepperpy needs the MCP SDK 2.x: pip install 'pepperpy-pg-memory[mcp]'"
    ) from exc

from .server import KEY_PREFIX, MAX_CONTENT_CHARS, create_server

__all__ = ["create_server", "KEY_PREFIX", "MAX_CONTENT_CHARS"]
