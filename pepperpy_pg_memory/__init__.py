"""pepperpy-pg-memory: the memory layer for LLM agents, on PostgreSQL.

Semantic recall through pgvector, contextual recall through full-text search, hybrid recall
fusing both, with memory types, scopes and expiry. Start with :class:`PostgresStorage`.
"""

from importlib.metadata import PackageNotFoundError, version

from .config import PostgresConfig
from .consolidation import ConsolidationReport, OwnerConsolidation
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
    MemoryEntry,
    MemoryOwner,
    MemoryQuery,
    MemorySearchResult,
    MemoryVersion,
    Ranking,
    StoredCount,
)
from .onnx_embedder import OnnxEmbedder
from .queries import ArrayPattern
from .storage import MemoryItem, MemorySearchResults, PostgresStorage, ProgressCallback
from .types import MANAGED_FIELD, MemoryIndex, MemoryScope, MemoryType

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
    "ArrayPattern",
    "MemoryEntry",
    "MemoryVersion",
    "Ranking",
    "StoredCount",
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
