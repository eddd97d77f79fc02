"""mem0 on PepperpyVectorStore through mem0's own ``langchain`` vector-store provider.

Run as its users would: ``Memory.from_config`` with our store as the provider's client,
``infer=False`` (no LLM call; the key is a dummy), telemetry off. What mem0 cannot do with any
LangChain store is mem0's, and is noted at the end of this module.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_pepperpy import EmbedderEmbeddings, PepperpyVectorStore
from pepperpy_pg_memory import HashingEmbedder

# mem0 reads these when imported: no telemetry, and its own files in a folder of ours.
os.environ["MEM0_TELEMETRY"] = "False"
os.environ.setdefault("MEM0_DIR", tempfile.mkdtemp(prefix="mem0-"))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from mem0 import Memory


@pytest.fixture
def memory(make_config: Any, tmp_path: Path) -> Iterator[tuple[Any, PepperpyVectorStore]]:
    embeddings = EmbedderEmbeddings(HashingEmbedder(128))
    store = PepperpyVectorStore.create(make_config(), embedding=embeddings)
    mem0 = Memory.from_config(
        {
            "vector_store": {"provider": "langchain", "config": {"client": store}},
            "embedder": {"provider": "langchain", "config": {"model": embeddings}},
            # Never called with infer=False; mem0 builds its client at start and wants a key.
            "llm": {"provider": "openai", "config": {"api_key": "sk-not-used"}},
            "history_db_path": str(tmp_path / "history.db"),
        }
    )
    yield mem0, store
    store.close()


def test_mem0_adds_searches_updates_and_deletes_per_user(
    memory: tuple[Any, PepperpyVectorStore],
) -> None:
    mem0, store = memory
    added = mem0.add("Alice drinks oat milk lattes every morning", user_id="alice", infer=False)
    alice_id = added["results"][0]["id"]
    mem0.add("Alice runs marathons in the spring", user_id="alice", infer=False)
    mem0.add("Bob drinks oat milk too, but iced", user_id="bob", infer=False)

    found = mem0.search("oat milk lattes", filters={"user_id": "alice"})["results"]
    # Bob's oat milk is his: only Alice's memory, with a real relevance score in [0, 1]
    # (mem0 drops weak matches, such as the marathon, by that score).
    assert [hit["id"] for hit in found] == [alice_id]
    assert 0 < found[0]["score"] <= 1
    strict = mem0.search("oat milk lattes", filters={"user_id": "alice"}, threshold=0.99)
    assert strict["results"] == []

    assert mem0.get(alice_id)["memory"] == "Alice drinks oat milk lattes every morning"
    mem0.update(alice_id, "Alice switched to soy milk")
    assert mem0.get(alice_id)["memory"] == "Alice switched to soy milk"
    again = mem0.search("soy milk", filters={"user_id": "alice"})["results"]
    assert again[0]["id"] == alice_id and again[0]["memory"] == "Alice switched to soy milk"
    assert [event["event"] for event in mem0.history(alice_id)] == ["ADD", "UPDATE"]

    mem0.delete(alice_id)
    assert mem0.get(alice_id) is None
    assert [d.id for d in store.get_by_ids([alice_id])] == []
    left = mem0.search("marathons in spring", filters={"user_id": "alice"})["results"]
    assert [hit["memory"] for hit in left] == ["Alice runs marathons in the spring"]


# mem0's own limits with any LangChain store (mem0ai 2.2.1), not ours:
# - Memory.get_all() lists through the provider's list(), which only knows Chroma's private
#   _collection; for every other store it returns nothing and get_all raises TypeError.
# - Its insert() calls add_embeddings(embeddings=..., metadatas=..., ids=...) without texts
#   (mem0ai/mem0#6657), a call langchain-postgres and FAISS refuse. PepperpyVectorStore takes
#   texts as optional for this reason: the vectors mem0 computed are stored as given, with the
#   memory text in mem0's metadata.
