"""The vocabulary of memories: what kind they are, whose they are, how they are found."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import NamedTuple

__all__ = [
    "MemoryType",
    "MemoryScope",
    "MemoryIndex",
    "Identity",
    "ProgressCallback",
    "MANAGED_FIELD",
]

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while long work runs."""

MANAGED_FIELD = "pepperpy_managed"
"""The metadata field that marks a memory as a record an adapter keeps (a chat message, a
LangGraph item), its value naming the adapter. Such rows are what their framework wrote,
verbatim: a write is never folded into them as a duplicate, and consolidation and the
per-owner quota leave them alone (a repeated "yes" stays in the transcript)."""


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
