"""A bounded least-recently-used map from a text's content hash to its embedding."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import numpy.typing as npt

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """Keeps the same text from being embedded twice while it stays among the last ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, npt.NDArray[np.float32]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, content_hash: bytes) -> npt.NDArray[np.float32] | None:
        vector = self._entries.get(content_hash)
        if vector is None:
            self.misses += 1
            return None
        self._entries.move_to_end(content_hash)
        self.hits += 1
        return vector

    def put(self, content_hash: bytes, vector: npt.NDArray[np.float32]) -> None:
        if self.size <= 0:
            return
        self._entries[content_hash] = vector
        self._entries.move_to_end(content_hash)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
