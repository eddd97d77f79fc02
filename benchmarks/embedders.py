"""Embedders that return vectors computed once, so storage is measured apart from the model."""

from __future__ import annotations

import hashlib
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


class RandomEmbedder:
    """A fixed random unit vector per text (seeded by the text): no model, no ties between
    distances, the hard case for an HNSW graph. For recall measurements where hashing vectors
    (sparse, many equal distances) would make "the ten nearest" ambiguous."""

    name = "random"

    def __init__(self, dimension: int = 384) -> None:
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    def _vector(self, text: str) -> npt.NDArray[np.float32]:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        vector = np.random.default_rng(seed).standard_normal(self._dimension)
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    async def embed_documents(self, texts: list[str]) -> Any:
        return np.stack([self._vector(text) for text in texts])

    async def embed_query(self, text: str) -> Any:
        return self._vector(text)
