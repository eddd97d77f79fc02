"""LangChain adapters for pepperpy-pg-memory: a VectorStore, a chat message history and a
memory retriever, all thin translations over the core :class:`PostgresStorage`.

Install with ``pip install 'pepperpy-pg-memory[langchain]'``.
"""

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "langchain_pepperpy needs LangChain: pip install 'pepperpy-pg-memory[langchain]'"
    ) from exc

from .chat_history import PepperpyChatMessageHistory
from .embeddings import EmbedderEmbeddings
from .retriever import PepperpyMemoryRetriever
from .vectorstore import PepperpyVectorStore, PepperpyVectorStoreRetriever

__all__ = [
    "PepperpyVectorStore",
    "PepperpyVectorStoreRetriever",
    "PepperpyChatMessageHistory",
    "PepperpyMemoryRetriever",
    "EmbedderEmbeddings",
]
