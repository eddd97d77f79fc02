"""Our embedders seen as a LlamaIndex ``BaseEmbedding``: an index built with it embeds nodes
with the same model the store searches with (all-MiniLM-L6-v2 by default, offline)."""

from __future__ import annotations

from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr

from pepperpy_pg_memory import Embedder
from pepperpy_pg_memory.runner import default_loop_thread

__all__ = ["PepperpyEmbedding", "LlamaIndexEmbedder", "as_store_embedder"]


class PepperpyEmbedding(BaseEmbedding):
    """A pepperpy :class:`~pepperpy_pg_memory.Embedder` behind LlamaIndex's interface
    (``PepperpyVectorStore.embed_model()`` gives the store's own)."""

    _embedder: Embedder = PrivateAttr()

    def __init__(self, embedder: Embedder, **fields: Any) -> None:
        super().__init__(model_name=type(embedder).__name__, **fields)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "PepperpyEmbedding"

    @staticmethod
    def _rows(vectors: Any) -> list[list[float]]:
        return np.asarray(vectors, dtype=np.float32).tolist()  # type: ignore[no-any-return]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._rows([default_loop_thread().run(self._embedder.embed_query(query))])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._rows([await self._embedder.embed_query(query)])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._rows(default_loop_thread().run(self._embedder.embed_documents(texts)))

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._rows(await self._embedder.embed_documents(texts))


class LlamaIndexEmbedder:
    """A LlamaIndex embedding model (``Settings.embed_model``, a ``HuggingFaceEmbedding``,
    ``OpenAIEmbedding``…) as the store's :class:`~pepperpy_pg_memory.Embedder`: the store then
    embeds queries and node texts with the model the index uses, and its table takes that
    model's dimension."""

    def __init__(self, model: BaseEmbedding) -> None:
        self.model = model
        self._dimension: int | None = None

    @property
    def name(self) -> str:
        """The class and the model, e.g. ``HuggingFaceEmbedding:BAAI/bge-small-en-v1.5``."""
        return f"{type(self.model).__name__}:{self.model.model_name}"

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = len(self.model.get_query_embedding("dimension probe"))
        return self._dimension

    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.model.aget_text_embedding_batch(texts)

    async def embed_query(self, text: str) -> list[float]:
        return await self.model.aget_query_embedding(text)


def as_store_embedder(embedder: Any) -> Any:
    """What the store embeds with for ``embedder``: one of ours (also when LlamaIndex sees it
    through :class:`PepperpyEmbedding`), a LlamaIndex model wrapped, anything else as given
    (a LangChain ``Embeddings``; None for the default model)."""
    if isinstance(embedder, PepperpyEmbedding):
        return embedder._embedder
    if isinstance(embedder, BaseEmbedding):
        return LlamaIndexEmbedder(embedder)
    return embedder
