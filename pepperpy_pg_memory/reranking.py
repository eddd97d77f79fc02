"""Optional re-ranking of search results by late interaction (token against token).

A search ranks by one vector per memory (and by words): fast, and blind to which words of
the question a memory answers. :class:`LateInteractionReranker` re-scores a search's top
candidates by MaxSim — for each word piece of the question, its best cosine among the
memory's word pieces, averaged — over the token vectors of the packaged all-MiniLM-L6-v2
(on onnxruntime, offline). That model was trained for pooled sentence vectors, not for late
interaction; on the conversation development set it still moves HYBRID hit@5 from 0.82 to
0.85, at about a tenth of a second per search of 20 candidates on two CPU cores
(``python -m benchmarks.conversations``). Nothing in the store calls it: a caller who wants
it searches for more candidates and re-ranks them::

    hits = await storage.search(MemoryQuery(query=q, limit=20, ...))
    best = await reranker.rerank(q, hits, limit=5)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from .conversations import question_weights, relevance_weight, time_cues
from .errors import MemoryValidationError
from .models import MemorySearchResult
from .onnx_embedder import OnnxEmbedder

__all__ = ["LateInteractionReranker", "maxsim"]

V = TypeVar("V")


def maxsim(question: np.ndarray, document: np.ndarray) -> float:
    """The mean over the question's token vectors of each one's best cosine in the
    document's (both unit vectors, one per row)."""
    if len(question) == 0 or len(document) == 0:
        return 0.0
    return float((question @ document.T).max(axis=1).mean())


class LateInteractionReranker:
    """Re-scores search results by :func:`maxsim` between the question and each memory's
    indexed text (``entry.text``).

    Args:
        embedder: the ONNX model whose token vectors are compared (default: the packaged
            all-MiniLM-L6-v2, the store's default model, loaded once).
    """

    def __init__(self, embedder: OnnxEmbedder | None = None) -> None:
        self.embedder = embedder if embedder is not None else OnnxEmbedder()

    async def rerank(
        self,
        question: str,
        results: Sequence[MemorySearchResult[V]],
        *,
        limit: int | None = None,
    ) -> list[MemorySearchResult[V]]:
        """``results`` best first by their MaxSim to ``question`` (the first ``limit``);
        each result's ``score`` becomes that MaxSim, in [-1, 1], and its first-stage score
        stays in ``relevance_score``. Ties keep the search's order. Conversation turns are
        weighed as the search weighs them: one that asks a question keeps half its MaxSim
        (:func:`~pepperpy_pg_memory.conversations.relevance_weight`), one of another time or
        speaker than the question names less
        (:func:`~pepperpy_pg_memory.conversations.question_weights`; an event the question
        dates by is not looked up here)."""
        if not isinstance(question, str) or not question.strip():
            raise MemoryValidationError("the question to re-rank by must be a non-empty str")
        if limit is not None and limit < 1:
            raise MemoryValidationError("limit must be at least 1")
        if not results:
            return []
        texts = [question, *(result.entry.text for result in results)]
        vectors = await asyncio.to_thread(self.embedder.token_vectors, texts)
        scores = [maxsim(vectors[0], document) for document in vectors[1:]]
        asked = question_weights(question, time_cues(question), [r.entry for r in results])
        for i, result in enumerate(results):
            if scores[i] > 0:
                scores[i] *= relevance_weight(result.entry) * asked[i]
        order = sorted(range(len(results)), key=lambda i: -scores[i])
        chosen = order if limit is None else order[:limit]
        reranked: list[MemorySearchResult[V]] = []
        for i in chosen:
            update: dict[str, Any] = {"score": scores[i], "relevance_score": results[i].score}
            reranked.append(results[i].model_copy(update=update))
        return reranked
