"""The memory store as Model Context Protocol tools: ``remember``, ``recall``, ``forget`` and
``list_memories``, for any agent host that speaks MCP.

A server acts for users: ``user_id`` names the USER owner of a call; without one, the server's
own user (``user=``) or, with none, the GLOBAL memories. A server started for one user is
bound to it: a call naming another user is refused unless ``allow_any_user``. One user's calls
never see, change or delete another's memories — every call goes through the core store with
its owner.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field

from pepperpy_pg_memory import (
    MemoryEntry,
    MemoryError,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    MemoryValidationError,
    PostgresStorage,
)
from pepperpy_pg_memory.serving import host_names
from pepperpy_pg_memory.values import check_visible

__all__ = [
    "create_server",
    "bearer_token_guard",
    "transport_security",
    "MAX_CONTENT_CHARS",
    "KEY_PREFIX",
]

MAX_CONTENT_CHARS = 20_000
"""The longest memory a model may store through the server (a memory, not a document)."""
MAX_RECALL = 50
KEY_PREFIX = "mcp:"
"""Keys of memories stored through the server (the rest is a random UUID)."""

Mode = Literal["hybrid", "semantic", "contextual"]
_MODES: dict[str, MemoryIndex] = {
    "hybrid": MemoryIndex.HYBRID,
    "semantic": MemoryIndex.SEMANTIC,
    "contextual": MemoryIndex.CONTEXTUAL,
}
_TYPES = ", ".join(t.value for t in MemoryType)

UserId = Annotated[
    str | None,
    Field(description="The user whose memories these are; omitted: the server's default owner."),
]


class Remembered(BaseModel):
    key: str = Field(description="The memory's key (for forget).")
    deduplicated: bool = Field(
        description="True when the user already had this memory: it was reinforced, not added."
    )


class Memory(BaseModel):
    key: str
    content: str
    score: float | None = Field(None, description="Relevance in [0, 1] (recall only).")
    type: str
    created_at: datetime
    metadata: dict[str, Any]


class Recalled(BaseModel):
    memories: list[Memory]


class Forgotten(BaseModel):
    deleted: bool


def create_server(
    storage: PostgresStorage[str, Any],
    *,
    user: str | None = None,
    allow_any_user: bool = False,
    name: str = "pepperpy-memory",
) -> MCPServer:
    """An MCP server whose tools read and write ``storage`` (started, on the loop the server
    runs on). ``user`` is the default owner (None: GLOBAL); with it set, calls may name only
    that user unless ``allow_any_user``.

    Raises:
        MemoryValidationError: ``user`` is empty or holds an invisible character (it would
            name memories that look like another user's).
    """
    if user is not None:
        if not user.strip():
            raise MemoryValidationError("the MCP server's user is empty")
        check_visible(user, "the MCP server's user")

    server = MCPServer(
        name=name,
        instructions=(
            "Long-term memory for this conversation's user. Call recall before answering "
            "anything that may depend on what the user said before; call remember for facts, "
            "preferences and decisions worth keeping; forget what the user asks to forget."
        ),
    )

    def owner(user_id: str | None) -> dict[str, Any]:
        if user_id is not None and (not isinstance(user_id, str) or not user_id.strip()):
            raise ToolError("user_id must be a non-empty string or omitted")
        if user is not None and user_id is not None and user_id != user and not allow_any_user:
            raise ToolError(
                f"this server acts for user {user!r} only; omit user_id or pass {user!r}"
            )
        chosen = user_id if user_id is not None else user
        if chosen is None:
            return {"scope": MemoryScope.GLOBAL, "scope_id": None}
        return {"scope": MemoryScope.USER, "scope_id": chosen}

    async def guarded(work: Callable[[], Awaitable[Any]]) -> Any:
        """The store's validation errors as tool errors the model can read and correct."""
        try:
            return await work()
        except MemoryValidationError as exc:
            raise ToolError(str(exc)) from None
        except MemoryError as exc:
            # Not the caller's fault (the database): a clear message, no internals.
            raise ToolError(f"the memory store failed: {type(exc).__name__}") from exc

    @server.tool(
        description="Store a memory for a user: a fact, preference or decision worth keeping."
    )
    async def remember(
        content: Annotated[str, Field(description="The memory, as one self-contained text.")],
        user_id: UserId = None,
        memory_type: Annotated[
            str, Field(description=f"One of: {_TYPES}. long_term unless it should expire.")
        ] = "long_term",
        metadata: Annotated[
            dict[str, Any] | None, Field(description="JSON object, searchable later.")
        ] = None,
        ttl_seconds: Annotated[
            float | None, Field(description="Forget it after this many seconds.", gt=0)
        ] = None,
        importance: Annotated[
            float, Field(description="How much it matters, 0 to 1.", ge=0, le=1)
        ] = 0.5,
    ) -> Remembered:
        text = content.strip() if isinstance(content, str) else ""
        if not text:
            raise ToolError("content is empty: say what to remember")
        if len(text) > MAX_CONTENT_CHARS:
            raise ToolError(
                f"content has {len(text)} characters; a memory may have {MAX_CONTENT_CHARS}"
            )
        try:
            kind = MemoryType(memory_type)
        except ValueError:
            raise ToolError(f"unknown memory_type {memory_type!r}; use one of: {_TYPES}") from None
        ttl = timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None
        # The same text twice is one memory (a model often repeats what it was told).
        dedupe = True if storage.config.dedupe_threshold is None else None
        entry = await guarded(
            lambda: storage.store(
                f"{KEY_PREFIX}{uuid.uuid4()}",
                text,
                type=kind,
                metadata=metadata,
                ttl=ttl,
                importance=importance,
                dedupe=dedupe,
                actor="mcp",
                **owner(user_id),
            )
        )
        return Remembered(key=entry.key, deduplicated=entry.deduplicated)

    @server.tool(description="Find a user's memories relevant to a question or topic.")
    async def recall(
        query: Annotated[str, Field(description="What to look for, in plain words.")],
        user_id: UserId = None,
        limit: Annotated[int, Field(description="How many memories at most.", ge=1)] = 5,
        mode: Annotated[
            Mode, Field(description="hybrid (meaning and words), semantic or contextual.")
        ] = "hybrid",
    ) -> Recalled:
        if not isinstance(query, str) or not query.strip():
            raise ToolError("query is empty: say what to look for")
        if limit > MAX_RECALL:
            raise ToolError(f"limit is {limit}; at most {MAX_RECALL} memories per recall")
        found = await guarded(
            lambda: storage.search(
                MemoryQuery(
                    query=query.strip(), index_type=_MODES[mode], limit=limit, **owner(user_id)
                )
            )
        )
        return Recalled(memories=[_memory(hit.entry, hit.score) for hit in found])

    @server.tool(description="Delete one of a user's memories by its key.")
    async def forget(
        key: Annotated[str, Field(description="The key remember or recall gave.")],
        user_id: UserId = None,
    ) -> Forgotten:
        who = owner(user_id)
        if not isinstance(key, str) or not key.strip():
            raise ToolError("key is empty")
        # A key another owner holds gets the answer a key nobody holds gets: telling them
        # apart would let one user probe another's keys.
        deleted = await guarded(lambda: storage.delete(key, actor="mcp", **who))
        return Forgotten(deleted=bool(deleted))

    @server.tool(description="List a user's memories, newest first.")
    async def list_memories(
        user_id: UserId = None,
        limit: Annotated[int, Field(description="How many at most.", ge=1)] = 20,
        memory_type: Annotated[str | None, Field(description=f"Only this type: {_TYPES}.")] = None,
    ) -> Recalled:
        if limit > MAX_RECALL * 4:
            raise ToolError(f"limit is {limit}; at most {MAX_RECALL * 4} memories per call")
        if memory_type is not None and memory_type not in {t.value for t in MemoryType}:
            raise ToolError(f"unknown memory_type {memory_type!r}; use one of: {_TYPES}")
        entries = await guarded(
            lambda: storage.list(
                types=memory_type,
                limit=limit,
                order_by="created_at",
                descending=True,
                **owner(user_id),
            )
        )
        return Recalled(memories=[_memory(entry, None) for entry in entries])

    return server


def _memory(entry: MemoryEntry[Any], score: float | None) -> Memory:
    return Memory(
        key=entry.key,
        content=entry.text,
        score=None if score is None else round(float(score), 4),
        type=entry.type.value,
        created_at=entry.created_at,
        metadata=entry.metadata,
    )


def transport_security(host: str, port: int) -> TransportSecuritySettings:
    """Host and Origin checks against DNS rebinding: only the names the server listens as."""
    hosts = sorted(host_names(host, port))
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def bearer_token_guard(app: ASGIApp, token: str) -> ASGIApp:
    """``app`` behind ``Authorization: Bearer <token>`` on every HTTP request (compared in
    constant time); anything else gets 401."""
    expected = f"Bearer {token}".encode()

    async def guarded(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                body = b'{"error": "missing or wrong bearer token"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded
