"""Our embedders seen as LangChain ``Embeddings`` (for ``VectorStore.embeddings``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from pepperpy_pg_memory import Embedder
from pepperpy_pg_memory.runner import default_loop_thread


class EmbedderEmbeddings(Embeddings):
    """A pepperpy :class:`~pepperpy_pg_memory.Embedder` behind LangChain's interface."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    @staticmethod
    def _rows(vectors: Any) -> list[list[float]]:
        return np.asarray(vectors, dtype=np.float32).tolist()  # type: ignore[no-any-return]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._rows(default_loop_thread().run(self.embedder.embed_documents(texts)))

    def embed_query(self, text: str) -> list[float]:
        return self._rows([default_loop_thread().run(self.embedder.embed_query(text))])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._rows(await self.embedder.embed_documents(texts))

    async def aembed_query(self, text: str) -> list[float]:
        return self._rows([await self.embedder.embed_query(text)])[0]
