"""The public surface: what `from pepperpy_pg_memory import ...` offers, pinned."""

from __future__ import annotations

import subprocess
import sys

import pepperpy_pg_memory
from pepperpy_pg_memory import MemoryIndex, MemoryType

EXPECTED = {
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
    "MemoryEntry",
    "MemoryVersion",
    "Ranking",
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
    "MemoryTimeoutError",
    "MemoryOutcomeUnknownError",
    "MemoryNotFoundError",
    "AmbiguousKeyError",
    "ArrayPattern",
    "MemoryValidationError",
    "DimensionMismatchError",
    "EmbedderMismatchError",
    "MemoryIndexError",
    "MemorySchemaError",
    "MemoryPermissionError",
    "MemoryQuotaError",
    "StoredCount",
    "StoredValue",
    "MemoryOwner",
    "ConsolidationReport",
    "OwnerConsolidation",
    "MANAGED_FIELD",
}


def test_exports_are_pinned() -> None:
    assert set(pepperpy_pg_memory.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(pepperpy_pg_memory, name), name


def test_error_hierarchy() -> None:
    from pepperpy_pg_memory import (
        DimensionMismatchError,
        EmbedderMismatchError,
        MemoryConfigurationError,
        MemoryConnectionError,
        MemoryError,
        MemoryIndexError,
        MemoryNotFoundError,
        MemorySchemaError,
        MemoryTimeoutError,
        MemoryValidationError,
    )

    for cls in (
        MemoryConfigurationError,
        MemoryConnectionError,
        MemoryTimeoutError,
        MemoryNotFoundError,
        MemoryValidationError,
        DimensionMismatchError,
        EmbedderMismatchError,
        MemoryIndexError,
        MemorySchemaError,
    ):
        assert issubclass(cls, MemoryError)
    assert issubclass(MemoryNotFoundError, KeyError)
    assert issubclass(MemoryValidationError, ValueError)
    assert issubclass(MemoryTimeoutError, TimeoutError)
    assert issubclass(MemoryConnectionError, ConnectionError)
    assert issubclass(pepperpy_pg_memory.MemoryOutcomeUnknownError, MemoryConnectionError)
    assert MemoryError("x").store_type == "postgres"


def test_seed_vocabulary_including_legacy_members() -> None:
    assert {t.name for t in MemoryType} >= {
        "SHORT_TERM",
        "MEDIUM_TERM",
        "LONG_TERM",
        "WORKING",
        "EPISODIC",
        "SEMANTIC",
        "PROCEDURAL",
    }
    assert {i.name for i in MemoryIndex} == {"SEMANTIC", "CONTEXTUAL", "HYBRID", "TEMPORAL"}


def test_core_never_imports_langchain_or_langgraph() -> None:
    code = (
        "import sys, pepperpy_pg_memory, pepperpy_pg_memory.storage;"
        "bad = [m for m in sys.modules if m.startswith(('langchain', 'langgraph'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_version_is_set() -> None:
    assert pepperpy_pg_memory.__version__ != "0.0.0"
