"""``PepperpyChatMessageHistory``: a conversation as SHORT_TERM memories of its session."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict

from pepperpy_pg_memory import (
    MemoryEntry,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    PostgresConfig,
    PostgresStorage,
    Turn,
)
from pepperpy_pg_memory.runner import BackgroundStorage

__all__ = ["PepperpyChatMessageHistory"]

KIND = "chat_message"
MANAGED_BY = "langchain-chat-history"
_PAGE = 1_000
_SPEAKERS = {"human": "User", "ai": "Assistant", "system": "System", "tool": "Tool"}
"""How a message's type is named as the speaker of its turn."""
_sequence = itertools.count()
_sequence_lock = threading.Lock()


def _order_stamp() -> str:
    """A key fragment that sorts in append order, also across tasks, threads and processes
    (nanosecond clock first, then a per-process counter to break ties)."""
    with _sequence_lock:
        return f"{time.time_ns():020d}-{next(_sequence) % 1_000_000:06d}"


def _text_of(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = [part if isinstance(part, str) else str(part.get("text", "")) for part in content]
    return " ".join(part for part in parts if part)


class PepperpyChatMessageHistory(BaseChatMessageHistory):
    """The messages of one session, stored as SHORT_TERM memories scoped to it.

    Because they are ordinary memories, earlier turns can also be recalled by meaning:
    :meth:`search` ("what did the user say about X?"). Messages of every type round-trip,
    tool calls included, in the order they were added.

    Examples:
        >>> history = PepperpyChatMessageHistory("session-42", config=PostgresConfig())
        >>> history.add_user_message("My router keeps dropping the connection")
        >>> history.messages[-1].content
        'My router keeps dropping the connection'

    Args:
        session_id: whose conversation; the SESSION scope_id of its memories.
        storage: a started store to share; or ``config`` to open one (embedded by default).
        ttl: time-to-live of the messages; None is SHORT_TERM's default from the config.
    """

    def __init__(
        self,
        session_id: str,
        *,
        storage: PostgresStorage[Any, Any] | None = None,
        config: PostgresConfig | None = None,
        ttl: Any = None,
    ) -> None:
        if not session_id:
            raise ValueError("session_id must be a non-empty string")
        if storage is not None and config is not None:
            raise ValueError("give either storage or config, not both")
        self.session_id = session_id
        self.ttl = ttl
        self._handle: BackgroundStorage[Any, Any] = (
            BackgroundStorage.share(storage)
            if storage is not None
            else BackgroundStorage.create(config)
        )

    def _owner(self) -> dict[str, Any]:
        return {"scope": MemoryScope.SESSION, "scope_id": self.session_id}

    def _prefix(self) -> str:
        return f"chat:{self.session_id}:"

    async def _read(self, storage: PostgresStorage[Any, Any]) -> list[BaseMessage]:
        entries: list[MemoryEntry[Any]] = []
        while True:
            # Keyset pages: each costs the same however long the conversation is.
            page = await storage.list(
                **self._owner(),
                types=MemoryType.SHORT_TERM,
                filter={"kind": KIND},
                key_prefix=self._prefix(),
                order_by="key",
                descending=False,
                limit=_PAGE,
                after=entries[-1] if entries else None,
            )
            entries += page
            if len(page) < _PAGE:
                break
        return messages_from_dict([entry.value["message"] for entry in entries])

    async def _write(
        self, storage: PostgresStorage[Any, Any], messages: Sequence[BaseMessage]
    ) -> None:
        stamp = _order_stamp()
        # Through store_conversation: a message is also found by the ones before it (an
        # answer by its question) and by its date. A transcript keeps every message,
        # repeats included (turns are never folded together).
        turns = [
            Turn(
                id=f"{self._prefix()}{stamp}-{position:05d}",
                speaker=_SPEAKERS.get(message.type, message.type),
                text=_text_of(message),
                value={"content": _text_of(message), "message": message_to_dict(message)},
                metadata={"kind": KIND, "role": message.type},
            )
            for position, message in enumerate(messages)
        ]
        await storage.store_conversation(
            self.session_id,
            turns,
            type=MemoryType.SHORT_TERM,
            ttl=self.ttl,
            managed_by=MANAGED_BY,
            **self._owner(),
        )

    async def _clear(self, storage: PostgresStorage[Any, Any]) -> None:
        await storage.delete_many(**self._owner(), filter={"kind": KIND}, key_prefix=self._prefix())

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return self._handle.call(self._read)

    async def aget_messages(self) -> list[BaseMessage]:
        return await self._handle.acall(self._read)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        self._handle.call(lambda s: self._write(s, messages))

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await self._handle.acall(lambda s: self._write(s, messages))

    def clear(self) -> None:
        self._handle.call(self._clear)

    async def aclear(self) -> None:
        await self._handle.acall(self._clear)

    def _query(self, query: str, k: int, index: MemoryIndex) -> MemoryQuery:
        return MemoryQuery(
            query=query,
            index_type=index,
            limit=k,
            types={MemoryType.SHORT_TERM},
            filter={"kind": KIND},
            key_prefix=self._prefix(),
            **self._owner(),
        )

    def search(
        self, query: str, k: int = 4, index: MemoryIndex = MemoryIndex.HYBRID
    ) -> list[BaseMessage]:
        """The earlier messages of this session most relevant to ``query``, best first."""
        q = self._query(query, k, index)
        results = self._handle.call(lambda s: s.search(q))
        return messages_from_dict([r.entry.value["message"] for r in results])

    async def asearch(
        self, query: str, k: int = 4, index: MemoryIndex = MemoryIndex.HYBRID
    ) -> list[BaseMessage]:
        q = self._query(query, k, index)
        results = await self._handle.acall(lambda s: s.search(q))
        return messages_from_dict([r.entry.value["message"] for r in results])

    def close(self) -> None:
        """Close the store if this history opened it."""
        self._handle.close()
