"""pepperpy-pg-memory: the memory layer for LLM agents, on PostgreSQL.

Semantic recall through pgvector, contextual recall through full-text search, hybrid recall
fusing both, with memory types, scopes and expiry. Start with :class:`PostgresStorage`.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .config import PostgresConfig
from .embeddings import (
    Embedder,
    HashingEmbedder,
    LangChainEmbedder,
    SentenceTransformerEmbedder,
    default_embedder,
)
from .errors import (
    AmbiguousKeyError,
    DimensionMismatchError,
    EmbedderMismatchError,
    MemoryConfigurationError,
    MemoryConnectionError,
    MemoryError,
    MemoryIndexError,
    MemoryNotFoundError,
    MemoryOutcomeUnknownError,
    MemoryPermissionError,
    MemoryQuotaError,
    MemorySchemaError,
    MemoryTimeoutError,
    MemoryValidationError,
)
from .models import (
    ConsolidationReport,
    MemoryEntry,
    MemoryOwner,
    MemoryQuery,
    MemorySearchResult,
    MemoryVersion,
    OwnerConsolidation,
    Ranking,
    StoredCount,
    StoredValue,
    Turn,
)
from .onnx_embedder import OnnxEmbedder
from .types import (
    MANAGED_FIELD,
    ArrayPattern,
    MemoryIndex,
    MemoryItem,
    MemoryScope,
    MemoryType,
    ProgressCallback,
)

if TYPE_CHECKING:
    from .results import MemorySearchResults
    from .storage import PostgresStorage

# Imported on first use: the store brings asyncpg and the database layer, which a command
# line's --help or a configuration check need not load.
_LAZY = {
    "PostgresStorage": ".storage",
    "MemorySearchResults": ".results",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


try:
    __version__ = version("pepperpy-pg-memory")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "__version__",
    "PostgresConfig",
    "PostgresStorage",
    "MemorySearchResults",
    "MemoryItem",
    "ProgressCallback",
    "MemoryType",
    "MemoryScope",
    "MemoryIndex",
    "MemoryQuery",
    "Turn",
    "ArrayPattern",
    "MemoryEntry",
    "MemoryVersion",
    "Ranking",
    "StoredCount",
    "StoredValue",
    "MemoryOwner",
    "ConsolidationReport",
    "OwnerConsolidation",
    "MANAGED_FIELD",
    "MemorySearchResult",
    "Embedder",
    "SentenceTransformerEmbedder",
    "OnnxEmbedder",
    "LangChainEmbedder",
    "HashingEmbedder",
    "default_embedder",
    "MemoryError",
    "MemoryConfigurationError",
    "MemoryConnectionError",
    "MemoryOutcomeUnknownError",
    "MemoryTimeoutError",
    "MemoryNotFoundError",
    "AmbiguousKeyError",
    "MemoryValidationError",
    "DimensionMismatchError",
    "EmbedderMismatchError",
    "MemoryIndexError",
    "MemorySchemaError",
    "MemoryPermissionError",
    "MemoryQuotaError",
]
