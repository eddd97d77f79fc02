"""Each adapter end to end with the real default embedder (all-MiniLM-L6-v2)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from langchain_pepperpy import PepperpyChatMessageHistory, PepperpyMemoryRetriever
from langgraph_pepperpy import PepperpyStore
from pepperpy_pg_memory import MemoryScope, PostgresStorage

pytestmark = pytest.mark.model


@pytest.fixture
async def model_storage(make_config: Any, minilm: Any) -> Any:
    async with PostgresStorage[str, Any](make_config(), minilm) as storage:
        yield storage


async def test_chat_history_recalls_an_earlier_turn_by_meaning(model_storage: Any) -> None:
    history = PepperpyChatMessageHistory("s-model", storage=model_storage)
    await history.aadd_messages(
        [
            HumanMessage(content="I'm allergic to peanuts, keep that in mind."),
            AIMessage(content="Noted, no peanuts."),
            HumanMessage(content="Can you recommend a hiking trail near Lisbon?"),
            AIMessage(content="Try the Sintra mountains trail."),
        ]
    )
    found = await history.asearch("what food can't the user eat?", k=1)
    assert "peanuts" in str(found[0].content)


async def test_retriever_recalls_a_paraphrase(model_storage: Any) -> None:
    await model_storage.store_many(
        [
            {
                "key": "job",
                "value": "Bruno works as a nurse at the city hospital",
                "scope": "user",
                "scope_id": "bruno",
            },
            {
                "key": "pet",
                "value": "Bruno has a dog named Biscuit",
                "scope": "user",
                "scope_id": "bruno",
            },
        ]
    )
    retriever = PepperpyMemoryRetriever.from_storage(
        model_storage, scope=MemoryScope.USER, scope_id="bruno", k=1
    )
    docs = await retriever.ainvoke("what is Bruno's profession?")
    assert docs[0].id == "job"


def test_langgraph_store_semantic_search(make_config: Any, minilm: Any) -> None:
    store = PepperpyStore.create(make_config(), minilm)
    try:
        namespace = ("users", "ana", "memories")
        store.put(namespace, "1", {"text": "Ana takes her coffee with oat milk"})
        store.put(namespace, "2", {"text": "Ana is training for a marathon"})
        hits = store.search(("users", "ana"), query="how does Ana like her morning drink?")
        assert hits[0].key == "1"
    finally:
        store.close()
