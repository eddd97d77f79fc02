"""The LlamaIndex adapter, driven through LlamaIndex's own objects end to end (LlamaIndex ships
no conformance suite for stores): VectorStoreIndex, retrievers with filters, a query engine,
ChatMemoryBuffer and Memory with a VectorMemoryBlock — offline (MockLLM, and our embedder)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import (
    ChatMessage,
    ImageBlock,
    MessageRole,
    TextBlock,
)
from llama_index.core.llms import MockLLM
from llama_index.core.memory import ChatMemoryBuffer, Memory, VectorMemoryBlock
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.storage.chat_store.base_db import MessageStatus
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)
from llama_index_pepperpy import (
    PepperpyChatStore,
    PepperpyDBChatStore,
    PepperpyEmbedding,
    PepperpyVectorStore,
)

from langchain_pepperpy import PepperpyVectorStore as LangChainVectorStore
from pepperpy_pg_memory import (
    MANAGED_FIELD,
    HashingEmbedder,
    MemoryScope,
    PostgresConfig,
    PostgresStorage,
)

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}
BRUNO = {"scope": MemoryScope.USER, "scope_id": "bruno"}


@pytest.fixture(autouse=True)
def offline_tokenizer() -> Iterator[None]:
    """LlamaIndex's default tokenizer downloads a tiktoken vocabulary on first use."""
    Settings.tokenizer = str.split
    yield


@pytest.fixture
async def storage(config: PostgresConfig) -> Any:
    async with PostgresStorage[str, Any](config, HashingEmbedder(256)) as store:
        yield store


@pytest.fixture
def ana(storage: PostgresStorage[str, Any]) -> PepperpyVectorStore:
    return PepperpyVectorStore.from_storage(storage, **ANA)


def _node(node_id: str, text: str, store: PepperpyVectorStore, **metadata: Any) -> TextNode:
    node = TextNode(id_=node_id, text=text, metadata=metadata)
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc-{node_id[0]}")
    node.embedding = store.embed_model().get_text_embedding(text)
    return node


NODES = [
    ("a1", "Ana is allergic to peanuts", {"topic": "health", "priority": 9, "tags": ["urgent"]}),
    ("a2", "Ana drinks green tea every morning", {"topic": "food", "priority": 2, "tags": []}),
    ("b1", "The refund policy allows 30 days", {"topic": "billing", "priority": 5}),
    ("b2", "Refunds need the original receipt", {"topic": "Billing", "tags": ["vip", "eu"]}),
]


@pytest.fixture
async def filled(ana: PepperpyVectorStore) -> PepperpyVectorStore:
    await ana.async_add([_node(i, text, ana, **meta) for i, text, meta in NODES])
    return ana


async def test_nodes_round_trip_and_adding_again_updates(
    ana: PepperpyVectorStore, storage: PostgresStorage[str, Any]
) -> None:
    node = _node("a1", "Ana is allergic to peanuts", ana, topic="health", nested={"x": [1, 2]})
    node.relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id="a2")
    assert await ana.async_add([node]) == ["a1"]
    [back] = await ana.aget_nodes(node_ids=["a1"])
    assert back.node_id == "a1" and back.get_content() == node.get_content()
    assert back.metadata == {"topic": "health", "nested": {"x": [1, 2]}}
    assert back.ref_doc_id == "doc-a"
    assert back.relationships[NodeRelationship.NEXT].node_id == "a2"
    # Re-adding a node updates it: one memory, the new text.
    await ana.async_add(
        [_node("a1", "Ana is allergic to peanuts and cashews", ana, topic="health")]
    )
    assert await storage.count(**ANA) == 1
    [again] = await ana.aget_nodes(node_ids=["a1"])
    assert again.get_content() == "Ana is allergic to peanuts and cashews"
    # A node is a memory: the core sees its text, owner and metadata.
    entry = await storage.retrieve("a1", **ANA)
    assert entry.text == "Ana is allergic to peanuts and cashews"
    assert entry.metadata["ref_doc_id"] == "doc-a" and entry.metadata["topic"] == "health"
    # And a memory written through the core reads as a text node.
    await storage.store("plain", "Ana plays chess", metadata={"topic": "games"}, **ANA)
    [plain] = await ana.aget_nodes(node_ids=["plain"])
    assert (plain.get_content(), plain.metadata) == ("Ana plays chess", {"topic": "games"})


async def test_query_modes_and_scores(filled: PepperpyVectorStore) -> None:
    embed = filled.embed_model()
    question = "is Ana allergic to peanuts?"
    semantic = await filled.aquery(
        VectorStoreQuery(query_embedding=embed.get_query_embedding(question), similarity_top_k=2)
    )
    assert semantic.ids is not None and semantic.ids[0] == "a1"
    words = await filled.aquery(
        VectorStoreQuery(
            query_str="refund receipt", mode=VectorStoreQueryMode.TEXT_SEARCH, similarity_top_k=1
        )
    )
    assert words.ids == ["b2"]
    hybrid = await filled.aquery(
        VectorStoreQuery(
            query_str="peanuts allergy",
            query_embedding=embed.get_query_embedding("peanuts allergy"),
            mode=VectorStoreQueryMode.HYBRID,
            similarity_top_k=2,
        )
    )
    assert hybrid.ids is not None and hybrid.ids[0] == "a1"
    mmr = await filled.aquery(
        VectorStoreQuery(
            query_embedding=embed.get_query_embedding("refunds"),
            mode=VectorStoreQueryMode.MMR,
            similarity_top_k=3,
            mmr_threshold=0.5,
        )
    )
    assert mmr.ids is not None and len(mmr.ids) == 3 and len(set(mmr.ids)) == 3
    for result in (semantic, words, hybrid, mmr):
        assert result.similarities is not None and result.nodes is not None
        assert all(0 <= score <= 1 for score in result.similarities)
        assert [n.node_id for n in result.nodes] == result.ids
    with pytest.raises(ValueError, match="not supported"):
        await filled.aquery(VectorStoreQuery(query_str="x", mode=VectorStoreQueryMode.SVM))


def _filters(*items: Any, condition: FilterCondition = FilterCondition.AND) -> MetadataFilters:
    return MetadataFilters(filters=list(items), condition=condition)


def _f(key: str, value: Any, operator: FilterOperator = FilterOperator.EQ) -> MetadataFilter:
    return MetadataFilter(key=key, value=value, operator=operator)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (_filters(_f("topic", "health")), {"a1"}),
        (_filters(_f("topic", "health", FilterOperator.NE)), {"a2", "b1", "b2"}),
        (_filters(_f("priority", 5, FilterOperator.GT)), {"a1"}),
        (_filters(_f("priority", 5, FilterOperator.GTE)), {"a1", "b1"}),
        (_filters(_f("priority", 5, FilterOperator.LT)), {"a2"}),
        (_filters(_f("priority", 2, FilterOperator.LTE)), {"a2"}),
        (_filters(_f("topic", ["food", "billing"], FilterOperator.IN)), {"a2", "b1"}),
        (_filters(_f("topic", ["food", "billing"], FilterOperator.NIN)), {"a1", "b2"}),
        (_filters(_f("tags", ["urgent", "eu"], FilterOperator.ANY)), {"a1", "b2"}),
        (_filters(_f("tags", ["vip", "eu"], FilterOperator.ALL)), {"b2"}),
        (_filters(_f("tags", "vip", FilterOperator.CONTAINS)), {"b2"}),
        (_filters(_f("topic", "bill", FilterOperator.TEXT_MATCH)), {"b1"}),
        (_filters(_f("topic", "BILL", FilterOperator.TEXT_MATCH_INSENSITIVE)), {"b1", "b2"}),
        (_filters(_f("tags", None, FilterOperator.IS_EMPTY)), {"a2", "b1"}),
        (
            _filters(_f("topic", "health"), _f("priority", 5), condition=FilterCondition.OR),
            {"a1", "b1"},
        ),
        (_filters(_f("topic", "health"), condition=FilterCondition.NOT), {"a2", "b1", "b2"}),
        (
            _filters(
                _f("priority", 2, FilterOperator.GT),
                _filters(
                    _f("topic", "health"),
                    _f("tags", "eu", FilterOperator.CONTAINS),
                    condition=FilterCondition.OR,
                ),
            ),
            {"a1"},
        ),
    ],
)
async def test_every_filter_operator_and_nesting(
    filled: PepperpyVectorStore, filters: MetadataFilters, expected: set[str]
) -> None:
    nodes = await filled.aget_nodes(filters=filters)
    assert {node.node_id for node in nodes} == expected
    embed = filled.embed_model().get_query_embedding("anything")
    found = await filled.aquery(
        VectorStoreQuery(query_embedding=embed, similarity_top_k=10, filters=filters)
    )
    assert set(found.ids or []) == expected


async def test_nodes_by_id_and_filter_together(filled: PepperpyVectorStore) -> None:
    both = _filters(_f("topic", ["health", "food"], FilterOperator.IN))
    found = await filled.aget_nodes(node_ids=["b1", "a1", "missing"], filters=both)
    assert [node.node_id for node in found] == ["a1"]
    found = await filled.aget_nodes(node_ids=["a2", "a1"], filters=both)
    assert [node.node_id for node in found] == ["a2", "a1"]  # in the order asked
    only = await filled.aget_nodes(node_ids=["a1"], filters=both)
    assert [node.node_id for node in only] == ["a1"]


async def test_filter_keys_are_never_spliced_into_sql(filled: PepperpyVectorStore) -> None:
    hostile = _filters(_f("topic') OR 1=1; --", "x"))
    with pytest.raises(ValueError, match="invalid filter key"):
        await filled.aget_nodes(filters=hostile)
    with pytest.raises(ValueError, match="invalid filter key"):
        await filled.aquery(
            VectorStoreQuery(query_str="x", mode=VectorStoreQueryMode.TEXT_SEARCH, filters=hostile)
        )


async def test_deletes_touch_only_this_owner(
    filled: PepperpyVectorStore, storage: PostgresStorage[str, Any]
) -> None:
    bruno = PepperpyVectorStore.from_storage(storage, **BRUNO)
    await bruno.async_add([_node("a1", "Bruno's node under the same id", bruno)])
    await filled.adelete("doc-a")  # Ana's a1 and a2
    assert {n.node_id for n in await filled.aget_nodes()} == {"b1", "b2"}
    await filled.adelete_nodes(node_ids=["b1"])
    await filled.adelete_nodes(filters=_filters(_f("topic", "Billing")))
    assert await filled.aget_nodes() == []
    assert [n.node_id for n in await bruno.aget_nodes()] == ["a1"]
    await bruno.aclear()
    assert await storage.count() == 0


def test_an_index_retriever_and_query_engine_end_to_end(config: PostgresConfig) -> None:
    """Sync, as a script or a notebook would: the store runs on a loop of its own."""
    ana = PepperpyVectorStore.create(config, embedder=HashingEmbedder(256), **ANA)
    try:
        documents = [
            Document(
                text="Ana is allergic to peanuts.", id_="health", metadata={"topic": "health"}
            ),
            Document(text="Ana drinks green tea.", id_="food", metadata={"topic": "food"}),
            Document(text="Refunds take 30 days.", id_="billing", metadata={"topic": "billing"}),
        ]
        index = VectorStoreIndex.from_documents(
            documents,
            storage_context=StorageContext.from_defaults(vector_store=ana),
            embed_model=ana.embed_model(),
        )
        retriever = index.as_retriever(
            similarity_top_k=2,
            filters=_filters(_f("topic", ["health", "food"], FilterOperator.IN)),
        )
        hits = retriever.retrieve("what is Ana allergic to?")
        assert [hit.node.ref_doc_id for hit in hits] == ["health", "food"]
        assert hits[0].score is not None and 0 <= hits[0].score <= 1
        engine = index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=1)
        answer = engine.query("is Ana allergic to peanuts?")
        assert answer.source_nodes and answer.source_nodes[0].node.ref_doc_id == "health"
        # The same memories through the core API and the LangChain store on the table.
        assert ana.client.loop is not None
        count = ana._handle.call(lambda s: s.count(**ANA))
        assert count == 3
        langchain = LangChainVectorStore.from_storage(ana.client, **ANA)
        found = langchain.similarity_search("Ana is allergic to peanuts.", k=1)
        assert found[0].page_content == "Ana is allergic to peanuts."
        index.delete_ref_doc("food")
        assert ana._handle.call(lambda s: s.count(**ANA)) == 2
    finally:
        ana.close()


class _WordsEmbedding(BaseEmbedding):
    """A user's own LlamaIndex embedding model (48 dimensions, hashing words, offline)."""

    @classmethod
    def class_name(cls) -> str:
        return "WordsEmbedding"

    def _vector(self, text: str) -> list[float]:
        counts = [0.0] * 48
        for word in text.lower().replace(".", " ").replace("?", " ").split():
            counts[zlib.crc32(word.encode()) % 48] += 1.0
        norm = sum(c * c for c in counts) ** 0.5 or 1.0
        return [c / norm for c in counts]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


def test_the_index_model_set_in_settings_is_the_stores_embedder(
    config: PostgresConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user whose Settings.embed_model is their own model gives it to the store: the table
    # takes its dimension, and the store embeds queries with it. (Set through the field the
    # property keeps, so that the test puts back whatever was there, unresolved.)
    monkeypatch.setattr(Settings, "_embed_model", _WordsEmbedding(model_name="words-48"))
    store = PepperpyVectorStore.create(config, embedder=Settings.embed_model, **ANA)
    try:
        assert store.client.layout.dimension == 48
        assert store.client.layout.embedder == "_WordsEmbedding:words-48/48"
        index = VectorStoreIndex.from_documents(
            [
                Document(text="Ana is allergic to peanuts.", id_="health"),
                Document(text="Refunds take 30 days.", id_="billing"),
            ],
            storage_context=StorageContext.from_defaults(vector_store=store),
        )
        hits = index.as_retriever(similarity_top_k=1).retrieve("peanuts allergic Ana")
        assert [hit.node.ref_doc_id for hit in hits] == ["health"]
        # A text query embedded by the store itself, with the same model.
        found = store.query(VectorStoreQuery(query_str="refunds days", similarity_top_k=1))
        assert found.nodes is not None and found.nodes[0].ref_doc_id == "billing"
    finally:
        store.close()


def _conversation() -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.SYSTEM, content="You are helpful."),
        ChatMessage(role=MessageRole.USER, content="Book a table for two"),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            blocks=[TextBlock(text="Checking"), ImageBlock(url="https://example.com/m.png")],
            additional_kwargs={
                "tool_calls": [{"id": "c1", "function": {"name": "book", "arguments": "{}"}}]
            },
        ),
        ChatMessage(
            role=MessageRole.TOOL, content="booked", additional_kwargs={"tool_call_id": "c1"}
        ),
    ]


def test_chat_store_round_trips_messages_for_chat_memory_buffer(config: PostgresConfig) -> None:
    chat = PepperpyChatStore.create(config)
    try:
        buffer = ChatMemoryBuffer.from_defaults(
            chat_store=chat, chat_store_key="ana", token_limit=500
        )
        for message in _conversation():
            buffer.put(message)
        back = chat.get_messages("ana")
        assert [m.model_dump() for m in back] == [m.model_dump() for m in _conversation()]
        assert [m.role for m in buffer.get()] == [m.role for m in _conversation()]
        chat.add_message("bruno", ChatMessage(role=MessageRole.USER, content="hi"))
        assert chat.get_keys() == ["ana", "bruno"]
        chat.add_message("carla", ChatMessage(role=MessageRole.USER, content="hi"))
        # Keys are listed by the page, in the database (one key a page here).
        from llama_index_pepperpy import chat_store

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(chat_store, "_KEYS_PAGE", 1)
            assert chat.get_keys() == ["ana", "bruno", "carla"]
        chat.delete_messages("carla")
        removed = chat.delete_message("ana", 1)
        assert removed is not None and removed.content == "Book a table for two"
        last = chat.delete_last_message("ana")
        assert last is not None and last.content == "booked"
        assert len(chat.get_messages("ana")) == 2
        chat.set_messages("ana", [ChatMessage(role=MessageRole.USER, content="again")])
        assert [m.content for m in chat.get_messages("ana")] == ["again"]
        assert [m.content for m in chat.delete_messages("ana") or []] == ["again"]
        assert chat.get_messages("ana") == [] and chat.get_messages("bruno")[0].content == "hi"
        # Adapter records: marked, so deduplication, consolidation and quotas leave them be.
        storage = chat._handle
        entries = storage.call(lambda s: s.list(scope=MemoryScope.SESSION, scope_id="bruno"))
        assert entries[0].metadata[MANAGED_FIELD] == "llama-index-chat-store"
    finally:
        chat.close()


async def test_concurrent_appends_keep_their_order(storage: PostgresStorage[str, Any]) -> None:
    chat = PepperpyDBChatStore.create(storage=storage)
    await asyncio.gather(
        *(
            chat.add_message("s", ChatMessage(role=MessageRole.USER, content=f"m{i}"))
            for i in range(30)
        )
    )
    assert [m.content for m in await chat.get_messages("s")] == [f"m{i}" for i in range(30)]


async def test_db_chat_store_active_archived_and_counts(
    storage: PostgresStorage[str, Any],
) -> None:
    chat = PepperpyDBChatStore.create(storage=storage)
    await chat.add_messages("s", _conversation())
    assert await chat.count_messages("s") == 4
    archived = await chat.archive_oldest_messages("s", 2)
    assert [m.role for m in archived] == [MessageRole.SYSTEM, MessageRole.USER]
    assert await chat.count_messages("s") == 2
    assert await chat.count_messages("s", status=MessageStatus.ARCHIVED) == 2
    every = await chat.get_messages("s", status=None)
    assert [m.model_dump() for m in every] == [m.model_dump() for m in _conversation()]
    assert [m.content for m in await chat.get_messages("s", limit=1, offset=1)] == ["booked"]
    deleted = await chat.delete_oldest_messages("s", 1)
    assert deleted[0].role == MessageRole.ASSISTANT
    await chat.delete_messages("s", status=MessageStatus.ARCHIVED)
    assert await chat.count_messages("s", status=None) == 1
    assert await chat.get_keys() == ["s"]


async def test_memory_with_our_chat_store_and_a_vector_memory_block(
    storage: PostgresStorage[str, Any],
) -> None:
    vectors = PepperpyVectorStore.from_storage(storage, scope=MemoryScope.USER, scope_id="ana")
    memory = Memory.from_defaults(
        session_id="ana-session",
        chat_store=PepperpyDBChatStore.create(storage=storage),
        token_limit=40,
        token_flush_size=10,
        chat_history_token_ratio=0.5,
        memory_blocks=[
            VectorMemoryBlock(vector_store=vectors, embed_model=PepperpyEmbedding(storage.embedder))
        ],
        tokenizer_fn=str.split,
    )
    facts = [
        "I am allergic to peanuts and shellfish",
        "My favourite drink is green tea with lemon",
        "I live in Lisbon near the river",
        "I work as a database administrator downtown",
        "Please book restaurants for two people",
    ]
    for fact in facts:
        await memory.aput(ChatMessage(role=MessageRole.USER, content=fact))
    chat = await memory.sql_store.get_messages("ana-session", status=None)
    assert [m.content for m in chat] == facts  # archived or active, none lost
    assert await memory.sql_store.count_messages("ana-session", MessageStatus.ARCHIVED) > 0
    # The archived turns were flushed into the vector block: memories of Ana.
    assert await storage.count(scope=MemoryScope.USER, scope_id="ana") > 0
    context = await memory.aget(input="what can I not eat?")
    assert any("peanuts" in str(message.content) for message in context)
