"""Embedders that return vectors computed once, so storage is measured apart from the model."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


class PrecomputedEmbedder:
    """Looks texts up in a table of vectors made before the timing started.

    Every system in a run gets the very same vectors (see langchain_embeddings for the
    anchors).
    """

    def __init__(self, table: dict[str, npt.NDArray[np.float32]]) -> None:
        self.table = table
        self._dimension = len(next(iter(table.values())))

    name = "precomputed"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed_documents(self, texts: list[str]) -> Any:
        return np.stack([self.table[text] for text in texts])

    async def embed_query(self, text: str) -> Any:
        return self.table[text]


def langchain_embeddings(table: dict[str, npt.NDArray[np.float32]]) -> Any:
    """A langchain_core Embeddings over the precomputed table."""
    from langchain_core.embeddings import Embeddings

    class _Lookup(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [table[text].tolist() for text in texts]

        def embed_query(self, text: str) -> list[float]:
            return table[text].tolist()

    return _Lookup()
