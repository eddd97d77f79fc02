"""LlamaIndex chat stores over the memory store: ``PepperpyChatStore`` (``BaseChatStore``,
what ``ChatMemoryBuffer`` uses) and ``PepperpyDBChatStore`` (``AsyncDBChatStore``, what
``Memory.from_defaults(chat_store=...)`` takes, with active and archived messages).

The two LlamaIndex interfaces give the same method names opposite colours (sync in one, async
in the other), so they are two classes over the same rows: a chat key is a SESSION owner, a
message is a short-term memory of it that never expires, marked as this adapter's record (so
deduplication, consolidation and quotas leave the transcript alone). Keys are time-ordered, so
messages keep the order they were added in, concurrent appends included.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.storage.chat_store.base import BaseChatStore
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus
from typing_extensions import Self

from pepperpy_pg_memory import (
    MANAGED_FIELD,
    MemoryEntry,
    MemoryIndex,
    MemoryScope,
    MemoryType,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.runner import BackgroundStorage

__all__ = ["PepperpyChatStore", "PepperpyDBChatStore", "ChatMessages"]

MANAGED_BY = "llama-index-chat-store"
_sequence = itertools.count()


def _order_stamp() -> str:
    """A key prefix that sorts in the order messages were added: nanoseconds, then a
    per-process counter (two appends in one nanosecond), then the process id."""
    return f"{time.time_ns():020d}-{next(_sequence) % 10**8:08d}-{os.getpid():07d}"


class ChatMessages:
    """The messages of every chat key, over one store (the async work both stores share)."""

    def __init__(self, ttl: Any = "never") -> None:
        self.ttl = ttl

    @staticmethod
    def owner(key: str) -> dict[str, Any]:
        if not isinstance(key, str) or not key:
            raise ValueError("a chat key is a non-empty string")
        return {"scope": MemoryScope.SESSION, "scope_id": key}

    @staticmethod
    def _filter(status: MessageStatus | None) -> dict[str, Any]:
        spec: dict[str, Any] = {MANAGED_FIELD: MANAGED_BY}
        if status is not None:
            spec["status"] = MessageStatus(status).value
        return spec

    async def entries(
        self,
        storage: PostgresStorage[Any, Any],
        key: str,
        status: MessageStatus | None = MessageStatus.ACTIVE,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[MemoryEntry[Any]]:
        """The key's messages in the order they were added (their keys' order)."""
        found: list[MemoryEntry[Any]] = []
        wanted = None if limit is None else offset + limit
        if wanted == 0:
            return found
        async for entry in storage.scan(filter=self._filter(status), **self.owner(key)):
            found.append(entry)
            if len(found) == wanted:
                break
        return found[offset:]

    async def get(
        self,
        storage: PostgresStorage[Any, Any],
        key: str,
        status: MessageStatus | None = MessageStatus.ACTIVE,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ChatMessage]:
        entries = await self.entries(storage, key, status, limit, offset)
        return [ChatMessage.model_validate(entry.value["message"]) for entry in entries]

    async def count(
        self, storage: PostgresStorage[Any, Any], key: str, status: MessageStatus | None
    ) -> int:
        return await storage.count(filter=self._filter(status), **self.owner(key))

    def _items(
        self, messages: Sequence[ChatMessage], status: MessageStatus, stamp: str | None = None
    ) -> list[dict[str, Any]]:
        stamp = stamp or _order_stamp()
        items = []
        for position, message in enumerate(messages):
            if not isinstance(message, ChatMessage):
                raise ValueError(f"message {position} is not a ChatMessage")
            dumped = message.model_dump(mode="json")
            items.append(
                {
                    "key": f"msg:{stamp}-{position:05d}",
                    "value": {"message": dumped},
                    "text": message.content or "",
                    "managed_by": MANAGED_BY,
                    "metadata": {
                        "status": MessageStatus(status).value,
                        "role": message.role.value,
                    },
                    # A transcript is read in order, not searched: no vectors to compute.
                    "indices": [MemoryIndex.CONTEXTUAL],
                }
            )
        return items

    async def add(
        self,
        storage: PostgresStorage[Any, Any],
        key: str,
        messages: Sequence[ChatMessage],
        status: MessageStatus = MessageStatus.ACTIVE,
        stamp: str | None = None,
    ) -> None:
        items = self._items(messages, status, stamp)
        if items:
            await storage.store_many(
                items, type=MemoryType.SHORT_TERM, ttl=self.ttl, dedupe=False, **self.owner(key)
            )

    async def delete(
        self, storage: PostgresStorage[Any, Any], key: str, status: MessageStatus | None = None
    ) -> int:
        return await storage.delete_many(filter=self._filter(status), **self.owner(key))

    async def delete_at(
        self, storage: PostgresStorage[Any, Any], key: str, idx: int
    ) -> ChatMessage | None:
        """Delete the ``idx``-th active message (0: the oldest)."""
        if idx < 0:
            return None
        entries = await self.entries(storage, key, MessageStatus.ACTIVE, limit=1, offset=idx)
        if not entries or not await storage.delete(entries[0].key, **self.owner(key)):
            return None
        return ChatMessage.model_validate(entries[0].value["message"])

    async def take_oldest(
        self, storage: PostgresStorage[Any, Any], key: str, n: int, *, archive: bool
    ) -> list[ChatMessage]:
        """Delete, or archive, the oldest ``n`` active messages; they are returned."""
        entries = await self.entries(storage, key, MessageStatus.ACTIVE, limit=max(n, 0))
        if not entries:
            return []
        messages = [ChatMessage.model_validate(e.value["message"]) for e in entries]
        if archive:
            # Same keys: the messages keep their place in the transcript.
            items = [
                {
                    "key": entry.key,
                    "value": entry.value,
                    "text": entry.text,
                    "metadata": {**entry.metadata, "status": MessageStatus.ARCHIVED.value},
                    "managed_by": MANAGED_BY,
                    "indices": [MemoryIndex.CONTEXTUAL],
                }
                for entry in entries
            ]
            await storage.store_many(
                items, type=MemoryType.SHORT_TERM, ttl=self.ttl, dedupe=False, **self.owner(key)
            )
        else:
            await storage.delete_many(keys=[e.key for e in entries], **self.owner(key))
        return messages

    async def keys(self, storage: PostgresStorage[Any, Any]) -> list[str]:
        """Every chat key holding messages (counted in the database, a page at a time)."""
        found: list[str] = []
        after: tuple[MemoryScope, str] | None = None
        while True:
            owners = await storage.owners(
                MemoryScope.SESSION,
                filter={MANAGED_FIELD: MANAGED_BY},
                limit=_KEYS_PAGE,
                after=after,
            )
            found += [owner.scope_id for owner in owners]
            if len(owners) < _KEYS_PAGE:
                return found
            after = (owners[-1].scope, owners[-1].scope_id)


_KEYS_PAGE = 1_000
"""Chat keys listed per query."""


class _OverMemories:
    """How both chat stores are made and closed (pydantic keeps their private attributes)."""

    _handle: BackgroundStorage[Any, Any]

    def __init__(self, handle: BackgroundStorage[Any, Any], *, ttl: Any = "never") -> None:
        super().__init__()
        self._handle = handle
        self._messages = ChatMessages(ttl)

    @classmethod
    def create(
        cls,
        config: PostgresConfig | None = None,
        *,
        storage: PostgresStorage[Any, Any] | None = None,
        ttl: Any = "never",
    ) -> Self:
        """On ``config`` (embedded server by default), or over a running ``storage``;
        messages live until deleted unless ``ttl`` says otherwise."""
        if storage is not None:
            return cls(BackgroundStorage.share(storage), ttl=ttl)
        return cls(BackgroundStorage.create(config), ttl=ttl)

    def close(self) -> None:
        """Close the underlying store if this object created it."""
        self._handle.close()


class PepperpyChatStore(_OverMemories, BaseChatStore):
    """LlamaIndex ``BaseChatStore`` (``ChatMemoryBuffer(chat_store=...)``): sync methods and
    their async forms, from any thread or event loop.

    Examples:
        >>> store = PepperpyChatStore.create()
        >>> memory = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key="ana")
    """

    _handle: BackgroundStorage[Any, Any] = PrivateAttr()
    _messages: ChatMessages = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        return "PepperpyChatStore"

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        self._handle.call(lambda s: self._set(s, key, messages))

    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        await self._handle.acall(lambda s: self._set(s, key, messages))

    async def _set(
        self, storage: PostgresStorage[Any, Any], key: str, messages: list[ChatMessage]
    ) -> None:
        await self._messages.delete(storage, key)
        await self._messages.add(storage, key, messages)

    def get_messages(self, key: str) -> list[ChatMessage]:
        return self._handle.call(lambda s: self._messages.get(s, key))

    async def aget_messages(self, key: str) -> list[ChatMessage]:
        return await self._handle.acall(lambda s: self._messages.get(s, key))

    def add_message(self, key: str, message: ChatMessage) -> None:
        self._handle.call(lambda s: self._messages.add(s, key, [message]))

    async def async_add_message(self, key: str, message: ChatMessage) -> None:
        await self._handle.acall(lambda s: self._messages.add(s, key, [message]))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        return self._handle.call(lambda s: self._delete_all(s, key))

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        return await self._handle.acall(lambda s: self._delete_all(s, key))

    async def _delete_all(
        self, storage: PostgresStorage[Any, Any], key: str
    ) -> list[ChatMessage] | None:
        messages = await self._messages.get(storage, key, status=None)
        await self._messages.delete(storage, key)
        return messages or None

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        return self._handle.call(lambda s: self._messages.delete_at(s, key, idx))

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        return await self._handle.acall(lambda s: self._messages.delete_at(s, key, idx))

    def delete_last_message(self, key: str) -> ChatMessage | None:
        return self._handle.call(lambda s: self._delete_last(s, key))

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        return await self._handle.acall(lambda s: self._delete_last(s, key))

    async def _delete_last(
        self, storage: PostgresStorage[Any, Any], key: str
    ) -> ChatMessage | None:
        count = await self._messages.count(storage, key, MessageStatus.ACTIVE)
        return await self._messages.delete_at(storage, key, count - 1)

    def get_keys(self) -> list[str]:
        return self._handle.call(self._messages.keys)

    async def aget_keys(self) -> list[str]:
        return await self._handle.acall(self._messages.keys)


class PepperpyDBChatStore(_OverMemories, AsyncDBChatStore):
    """LlamaIndex ``AsyncDBChatStore``, for ``Memory.from_defaults(chat_store=...)``:
    active and archived messages per chat key, counts, and archiving of the oldest."""

    _handle: BackgroundStorage[Any, Any] = PrivateAttr()
    _messages: ChatMessages = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        return "PepperpyDBChatStore"

    async def get_messages(
        self,
        key: str,
        status: MessageStatus | None = MessageStatus.ACTIVE,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[ChatMessage]:
        return await self._handle.acall(
            lambda s: self._messages.get(s, key, status, limit, offset or 0)
        )

    async def count_messages(
        self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE
    ) -> int:
        return await self._handle.acall(lambda s: self._messages.count(s, key, status))

    async def add_message(
        self, key: str, message: ChatMessage, status: MessageStatus = MessageStatus.ACTIVE
    ) -> None:
        await self._handle.acall(lambda s: self._messages.add(s, key, [message], status))

    async def add_messages(
        self,
        key: str,
        messages: list[ChatMessage],
        status: MessageStatus = MessageStatus.ACTIVE,
    ) -> None:
        await self._handle.acall(lambda s: self._messages.add(s, key, messages, status))

    async def set_messages(
        self,
        key: str,
        messages: list[ChatMessage],
        status: MessageStatus = MessageStatus.ACTIVE,
    ) -> None:
        async def replace(storage: PostgresStorage[Any, Any]) -> None:
            await self._messages.delete(storage, key)
            await self._messages.add(storage, key, messages, status)

        await self._handle.acall(replace)

    async def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Delete the ``idx``-th active message (0: the oldest) and return it."""
        return await self._handle.acall(lambda s: self._messages.delete_at(s, key, idx))

    async def delete_messages(self, key: str, status: MessageStatus | None = None) -> None:
        await self._handle.acall(lambda s: self._messages.delete(s, key, status))

    async def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        return await self._handle.acall(
            lambda s: self._messages.take_oldest(s, key, n, archive=False)
        )

    async def archive_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        return await self._handle.acall(
            lambda s: self._messages.take_oldest(s, key, n, archive=True)
        )

    async def get_keys(self) -> list[str]:
        return await self._handle.acall(self._messages.keys)
