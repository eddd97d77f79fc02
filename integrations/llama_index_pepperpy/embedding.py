"""Our embedders seen as a LlamaIndex ``BaseEmbedding``: an index built with it embeds nodes
with the same model the store searches with (all-MiniLM-L6-v2 by default, offline)."""

from __future__ import annotations

from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr

from pepperpy_pg_memory import Embedder
from pepperpy_pg_memory.runner import default_loop_thread

__all__ = ["PepperpyEmbedding"]


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
