"""The vocabulary of memories: what kind they are, whose they are, how they are found."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Literal, NamedTuple, Protocol, TypedDict

__all__ = [
    "MemoryType",
    "MemoryScope",
    "MemoryIndex",
    "Identity",
    "ProgressCallback",
    "MANAGED_FIELD",
    "DOCUMENT_FIELD",
    "CONVERSATION_RECORDS",
    "TTL",
    "Scope",
    "MemoryItem",
    "ListOrder",
    "ArrayPattern",
    "Distribution",
    "Summarizer",
]

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while long work runs."""

MANAGED_FIELD = "pepperpy_managed"
"""The metadata field that marks a memory as a record an adapter keeps (a chat message, a
LangGraph item), its value naming the adapter. Such rows are what their framework wrote,
verbatim: a write is never folded into them as a duplicate, and consolidation and the
per-owner quota leave them alone (a repeated "yes" stays in the transcript)."""

DOCUMENT_FIELD = "pepperpy_document"
"""The metadata field that marks a document an adapter keeps under the id its framework
gave it (a LangChain vector store's), its value naming the adapter. Unlike ``MANAGED_FIELD``
records, documents are the owner's knowledge: they count toward the per-owner quota (and,
being long-term, are never evicted); but an id must always name its document, so nothing is
ever folded into one as a duplicate and consolidation never merges one."""

CONVERSATION_RECORDS = "conversation"
"""The ``MANAGED_FIELD`` value of the turns ``store_conversation`` writes."""


class MemoryType(str, Enum):
    """How long-lived and what kind of knowledge a memory is.

    Types with a default time-to-live (see ``PostgresConfig.type_ttls``) expire on their own:
    SHORT_TERM, WORKING and MEDIUM_TERM. The others live until deleted.
    """

    SHORT_TERM = "short_term"
    """Recent conversation turns and facts of the current session."""
    MEDIUM_TERM = "medium_term"
    """Facts worth keeping for days or weeks (kept for users of the original pepperpy API)."""
    LONG_TERM = "long_term"
    """Durable knowledge about a user, an agent or the world."""
    WORKING = "working"
    """Scratch state of a task in progress."""
    EPISODIC = "episodic"
    """Records of past events and interactions."""
    SEMANTIC = "semantic"
    """General facts and concepts."""
    PROCEDURAL = "procedural"
    """How to do things: instructions, tool usage, learned routines."""


class MemoryScope(str, Enum):
    """Whose memory it is. Together with a ``scope_id`` it names one owner."""

    SESSION = "session"
    """One conversation; ``scope_id`` is the session id."""
    USER = "user"
    """One end user across sessions; ``scope_id`` is the user id."""
    AGENT = "agent"
    """One agent across users; ``scope_id`` is the agent id."""
    GLOBAL = "global"
    """Everyone; has no ``scope_id``."""


class MemoryIndex(str, Enum):
    """Which index a memory is stored in, or which one a query uses."""

    SEMANTIC = "semantic"
    """Meaning: cosine similarity of embeddings through a pgvector HNSW index."""
    CONTEXTUAL = "contextual"
    """Words: PostgreSQL full-text search, with trigram matching for misspellings."""
    HYBRID = "hybrid"
    """Both, fused by reciprocal-rank fusion. A query mode, not something to store into."""
    TEMPORAL = "temporal"
    """Recency: newest first (kept for users of the original pepperpy API). A query mode."""


STORABLE_INDICES = frozenset({MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL})
"""The indices an entry can be written into; the others are ways of querying them."""


class Identity(NamedTuple):
    """What names one memory within a store's tenant: its owner (scope and scope_id; ''
    for GLOBAL) and its key. Two owners may each hold a memory under the same key."""

    scope: str
    scope_id: str
    key: str


Scope = MemoryScope | str | None
"""A scope as callers give it; None for none."""

TTL = timedelta | float | int | Literal["never"] | None
"""A time-to-live: a timedelta or seconds; ``"never"``; None for the memory type's default."""

ListOrder = Literal["created_at", "updated_at", "key"]
"""What ``PostgresStorage.list`` orders by."""

Distribution = Literal["owner", "tenant"]
"""How a Citus cluster places memories: by owner (``scope_id``) or by tenant."""


@dataclass(frozen=True)
class ArrayPattern:
    """Matches a JSON array of strings by its first (``at="start"``) or last (``"end"``)
    elements; a None label matches any element."""

    labels: tuple[str | None, ...]
    at: Literal["start", "end"] = "start"


class Invocable(Protocol):
    """An object with an async ``ainvoke`` (a LangChain chat model, for one)."""

    def ainvoke(self, input: Any, /) -> Awaitable[Any]: ...


Summarizer = Callable[[list[Any]], Awaitable[str] | str] | Invocable
"""A summariser: ``async (entries) -> str``, or any object with an async ``ainvoke`` taking a
prompt and returning a message or a string (a LangChain chat model fits)."""


class _RequiredItem(TypedDict):
    key: str
    value: Any


class MemoryItem(_RequiredItem, total=False):
    """One entry for :meth:`PostgresStorage.store_many`: ``key`` and ``value``, and optionally
    any of the other fields, each overriding the call's default. A ``(key, value)`` pair is
    accepted too."""

    type: MemoryType | str
    scope: MemoryScope | str
    scope_id: str | None
    indices: Iterable[MemoryIndex | str] | None
    metadata: Mapping[str, Any] | None
    ttl: TTL
    expires_at: datetime | None
    embedding: Any
    text: str | None
    """The text to index, instead of what ``text_of(value)`` gives."""
    passages: Sequence[str] | None
    """Texts embedded one by one beside the memory's own (see ``store``)."""
    importance: float
    """In [0, 1]; 0.5 when not given."""
    document_of: str
    """For adapters only: the adapter whose document this is (kept in metadata under
    ``DOCUMENT_FIELD``, which callers' own metadata may not name): counted by the quota, never
    folded into or merged."""
    managed_by: str
    """For adapters only: the adapter whose record this is (kept in metadata under
    ``MANAGED_FIELD``, which callers' own metadata may not name). Such records are read back
    by the adapter that wrote them and left out of quotas, deduplication and consolidation."""
