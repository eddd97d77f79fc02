"""The real default model (all-MiniLM-L6-v2, offline): recall of paraphrased memories."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pepperpy_pg_memory import (
    LangChainEmbedder,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    PostgresStorage,
    SentenceTransformerEmbedder,
)

pytestmark = pytest.mark.model

MEMORIES = {
    "allergy": "Ana is allergic to peanuts and must never eat them.",
    "coffee": "Ana takes her coffee with oat milk and no sugar.",
    "trip": "Bruno is planning a hiking trip to Patagonia in March.",
    "job": "Bruno works as a database administrator in Lisbon.",
    "router": "To fix the internet, unplug the router for thirty seconds.",
    "refund": "Refunds are possible within thirty days with a receipt.",
    "kids": "Ana has two daughters who are seven and four years old.",
    "pasta": "Water boils at a lower temperature at high altitude.",
    "weather": "Call the weather tool with a city name to get a forecast.",
    "vegan": "Carla follows a strict vegan diet.",
}

PARAPHRASES = {
    "which nuts are dangerous for Ana?": "allergy",
    "how does Ana like her morning drink?": "coffee",
    "Bruno's vacation in South America": "trip",
    "what is Bruno's profession?": "job",
    "my wifi stopped working, what should I do?": "router",
    "can I get my money back after buying something?": "refund",
    "how many children does Ana have?": "kids",
    "why does cooking take longer in the mountains?": "pasta",
    "how do I find out if it will rain tomorrow?": "weather",
    "Carla doesn't eat animal products": "vegan",
}


def test_default_embedder_is_offline_minilm(minilm: SentenceTransformerEmbedder) -> None:
    assert minilm.dimension == 384


async def test_embeddings_are_normalised_and_batched_consistently(
    minilm: SentenceTransformerEmbedder,
) -> None:
    texts = ["first sentence", "second sentence", "third"]
    batch = np.asarray(await minilm.embed_documents(texts))
    single = np.asarray(await minilm.embed_query("second sentence"))
    assert batch.shape == (3, 384)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-4)
    assert np.allclose(batch[1], single, atol=1e-4)


async def test_paraphrases_find_their_memory_in_the_top_3(
    make_config: Any, minilm: SentenceTransformerEmbedder
) -> None:
    async with PostgresStorage[str, Any](make_config(), minilm) as store:
        await store.store_many(
            {"key": key, "value": {"content": text}, "scope": MemoryScope.USER, "scope_id": "u"}
            for key, text in MEMORIES.items()
        )
        for index in (MemoryIndex.SEMANTIC, MemoryIndex.HYBRID):
            for question, expected in PARAPHRASES.items():
                hits = await store.search(MemoryQuery(query=question, index_type=index, limit=3))
                assert expected in [h.entry.key for h in hits], (index, question)
        top = await store.search(MemoryQuery(query="which nuts are dangerous for Ana?", limit=1))
        assert top[0].entry.key == "allergy" and top[0].score > 0.4


class _FakeLangChainEmbeddings:
    """Shaped like langchain_core's Embeddings (sync and async methods), without LangChain."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        self.inner = inner

    def embed_query(self, text: str) -> list[float]:
        return [float(x) for x in self.inner._encode([text])[0]]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in self.inner._encode(texts)]

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)


async def test_langchain_style_embeddings_are_adapted(
    make_config: Any, minilm: SentenceTransformerEmbedder
) -> None:
    async with PostgresStorage[str, Any](make_config(), _FakeLangChainEmbeddings(minilm)) as store:
        assert isinstance(store.embedder, LangChainEmbedder)
        assert store.layout.dimension == 384
        await store.store_many([("a", MEMORIES["vegan"]), ("b", MEMORIES["job"])])
        hits = await store.search(MemoryQuery(query="no meat or dairy for Carla", limit=1))
        assert hits[0].entry.key == "a"
