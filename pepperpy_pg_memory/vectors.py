"""The embedding pipeline: the embedder, the cache in front of it, and the checks every vector
passes before it reaches the table.

:func:`check_vectors` is pure (it needs only the table's dimension); :class:`EmbeddingPipeline`
adds the model and the cache: each distinct text is embedded once, in batches, and a text
embedded recently is answered from the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .cache import EmbeddingCache
from .embeddings import Embedder
from .errors import DimensionMismatchError, MemoryValidationError

__all__ = ["Vector", "EmbeddingPipeline", "check_vectors", "one_vector", "content_hash"]

Vector = npt.NDArray[np.float32]

ProgressCallback = Callable[[int, int], None]


def content_hash(text: str) -> bytes:
    """What identifies a text for the cache and for "has it changed since it was embedded"."""
    return hashlib.sha256(text.encode()).digest()


def check_vectors(vectors: Any, count: int, dimension: int) -> Vector:
    """``vectors`` as a ``count`` × ``dimension`` float32 array, or an error saying why not."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != count:
        raise MemoryValidationError(
            f"the embedder returned {array.shape[0] if array.ndim else 0} vectors for {count} texts"
        )
    if array.shape[1] != dimension:
        raise DimensionMismatchError(
            f"embedding has {array.shape[1]} dimensions; this store's vectors have {dimension}",
            expected=dimension,
            actual=int(array.shape[1]),
        )
    if not np.isfinite(array).all():
        raise MemoryValidationError("embedding contains NaN or infinity")
    if (np.abs(array).max(axis=1) == 0).any():
        raise MemoryValidationError("embedding is all zeros: cosine similarity is undefined for it")
    return array


def one_vector(raw: Any, dimension: int) -> Vector:
    """One embedding given by a caller, checked like the embedder's (a copy: the caller's
    array may change after the call)."""
    vector: Vector = np.array(raw, dtype=np.float32)
    # The common case in three cheap steps (a bulk load checks thousands): a float32's sum
    # in float64 cannot overflow, so it is finite exactly when every element is.
    finite = vector.shape == (dimension,) and math.isfinite(vector.sum(dtype=np.float64))
    if finite and vector.any():
        return vector
    as_rows = vector[np.newaxis] if vector.ndim == 1 else np.asarray([raw], dtype=np.float32)
    checked: Vector = check_vectors(as_rows, 1, dimension)[0]
    return checked


class EmbeddingPipeline:
    """Texts in, checked vectors out, each distinct text embedded as few times as possible.

    Args:
        embedder: the model.
        cache_size: how many recent texts' vectors to keep (0 keeps none).
        batch_size: texts per call of ``embed_documents``.
    """

    def __init__(self, embedder: Embedder, cache_size: int, batch_size: int) -> None:
        self.embedder = embedder
        self.cache = EmbeddingCache(cache_size)
        self.batch_size = batch_size
        self.dimension: int | None = None
        """The table's vector dimension, once the store has started."""

    async def model_dimension(self) -> int:
        """The embedder's dimension (loading a model may block: it runs in a thread)."""
        return await asyncio.to_thread(lambda: int(self.embedder.dimension))

    def _dimension(self) -> int:
        if self.dimension is None:
            raise MemoryValidationError("the storage is not started: await storage.start() first")
        return self.dimension

    def check(self, raw: Any) -> Vector:
        """A caller's own vector, checked against the table's dimension."""
        return one_vector(raw, self._dimension())

    async def embed(self, texts: list[str], progress: ProgressCallback | None = None) -> Vector:
        """Vectors for ``texts``, in batches, each distinct text embedded once."""
        dimension = self._dimension()
        unique = list(dict.fromkeys(texts))
        vectors: dict[str, Vector] = {}
        for start in range(0, len(unique), self.batch_size):
            chunk = unique[start : start + self.batch_size]
            embedded = check_vectors(
                await self.embedder.embed_documents(chunk), len(chunk), dimension
            )
            vectors.update(zip(chunk, embedded, strict=True))
            if progress is not None:
                progress(min(start + self.batch_size, len(unique)), len(unique))
        if not texts:
            return np.zeros((0, dimension), dtype=np.float32)
        return np.stack([vectors[text] for text in texts])

    async def embed_cached(self, texts: list[str]) -> Vector:
        """Like :meth:`embed`, answering texts embedded recently from the cache (and caching
        the rest)."""
        vectors: dict[str, Vector] = {}
        missing = []
        for text in dict.fromkeys(texts):
            cached = self.cache.get(content_hash(text))
            if cached is None:
                missing.append(text)
            else:
                vectors[text] = cached
        if missing:
            for text, vector in zip(missing, await self.embed(missing), strict=True):
                vectors[text] = vector
                self.cache.put(content_hash(text), vector)
        if not texts:
            return np.zeros((0, self._dimension()), dtype=np.float32)
        return np.stack([vectors[text] for text in texts])

    async def query(self, text: str) -> Vector:
        """The vector a search for ``text`` uses: from the cache, or the model's query
        embedding (checked, then cached)."""
        key = content_hash(text)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        vector = self.check(await self.embedder.embed_query(text))
        self.cache.put(key, vector)
        return vector
