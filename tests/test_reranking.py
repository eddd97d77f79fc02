"""The optional late-interaction re-ranker, with the real model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pepperpy_pg_memory import (
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryValidationError,
    OnnxEmbedder,
    PostgresStorage,
)
from pepperpy_pg_memory.reranking import LateInteractionReranker, maxsim

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}


def test_maxsim_takes_each_question_tokens_best_match() -> None:
    question = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    document = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    assert maxsim(question, document) == pytest.approx((1.0 + 0.8) / 2)
    assert maxsim(question, np.zeros((0, 2), dtype=np.float32)) == 0.0


@pytest.mark.model
async def test_reranking_orders_by_the_question_and_keeps_the_first_scores(
    make_config: Any,
) -> None:
    embedder = OnnxEmbedder()
    async with PostgresStorage[str, Any](make_config(), embedder) as store:
        await store.store_many(
            [
                ("weather", "It rained all week and the garden is flooded."),
                ("dog-name", "We named the new puppy Biscuit, after a cat."),
                ("coffee", "Ana drinks her coffee with oat milk."),
            ],
            **ANA,
        )
        question = "What is the name of the puppy?"
        hits = await store.search(
            MemoryQuery(query=question, index_type=MemoryIndex.HYBRID, limit=3, **ANA)
        )
        reranked = await LateInteractionReranker(embedder).rerank(question, hits, limit=2)
    assert len(reranked) == 2 and reranked[0].entry.key == "dog-name"
    assert reranked[0].score >= reranked[1].score
    first = {hit.entry.key: hit.score for hit in hits}
    assert all(hit.relevance_score == first[hit.entry.key] for hit in reranked)


@pytest.mark.model
async def test_reranking_nothing_or_a_bad_question() -> None:
    reranker = LateInteractionReranker()
    assert await reranker.rerank("anything", []) == []
    with pytest.raises(MemoryValidationError):
        await reranker.rerank("  ", [])
    with pytest.raises(MemoryValidationError):
        await reranker.rerank("q", [], limit=0)


@pytest.mark.model
async def test_a_turn_that_asks_keeps_half_its_maxsim(make_config: Any) -> None:
    from datetime import date

    from pepperpy_pg_memory import Turn
    from pepperpy_pg_memory.conversations import OTHER_SPEAKER_WEIGHT

    embedder = OnnxEmbedder()
    day = date(2023, 5, 11)
    async with PostgresStorage[str, Any](make_config(), embedder) as store:
        await store.store_conversation(
            "s1",
            [
                Turn(id="q", speaker="Ana", text="How's the job going?", at=day),
                Turn(id="a", speaker="Bruno", text="I quit! I'm a nurse now.", at=day),
            ],
            **ANA,
        )
        question = "How is Bruno's job going?"
        hits = await store.search(
            MemoryQuery(query=question, index_type=MemoryIndex.HYBRID, limit=2, **ANA)
        )
        reranker = LateInteractionReranker(embedder)
        reranked = {hit.entry.key: hit.score for hit in await reranker.rerank(question, hits)}
        texts = [question, *(hit.entry.text for hit in hits)]
        vectors = embedder.token_vectors(texts)
    plain = {hit.entry.key: maxsim(vectors[0], vectors[i + 1]) for i, hit in enumerate(hits)}
    # Ana's question keeps half, and of that what a turn of another speaker than the one
    # the question names keeps, as in the search.
    assert reranked["q"] == pytest.approx(plain["q"] / 2 * OTHER_SPEAKER_WEIGHT, rel=1e-5)
    assert reranked["a"] == pytest.approx(plain["a"], rel=1e-5)
