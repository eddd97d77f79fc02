"""LlamaIndex adapter for pepperpy-pg-memory: ``PepperpyVectorStore`` (nodes as memories),
``PepperpyChatStore`` (``BaseChatStore``) and ``PepperpyDBChatStore`` (``AsyncDBChatStore``,
for ``Memory``). Install with ``pip install 'pepperpy-pg-memory[llamaindex]'``."""

try:
    import llama_index.core.vector_stores.types  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "llama_index_pepperpy needs LlamaIndex: pip install 'pepperpy-pg-memory[llamaindex]'"
    ) from exc

from .chat_store import PepperpyChatStore, PepperpyDBChatStore
from .embedding import LlamaIndexEmbedder, PepperpyEmbedding
from .vector_store import PepperpyVectorStore, to_filter

__all__ = [
    "PepperpyVectorStore",
    "PepperpyChatStore",
    "PepperpyDBChatStore",
    "PepperpyEmbedding",
    "LlamaIndexEmbedder",
    "to_filter",
]
