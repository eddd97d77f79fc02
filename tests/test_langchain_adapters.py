"""The LangChain adapters beyond the standard suite: scores, filters, MMR, hybrid, scopes,
the chat history in a real chain, and the memory retriever as a tool."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from langchain_pepperpy import (
    PepperpyChatMessageHistory,
    PepperpyMemoryRetriever,
    PepperpyVectorStore,
)
from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryError,
    MemoryIndex,
    MemoryScope,
    MemoryType,
    PostgresStorage,
    Ranking,
)
from pepperpy_pg_memory.runner import run_on, run_on_async


class WordEmbeddings(DeterministicFakeEmbedding):
    """Shared words give similar vectors (the hashing embedder behind LangChain's interface)."""

    def __init__(self) -> None:
        super().__init__(size=64)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return [float(x) for x in HashingEmbedder(64)._vector(text)]


@pytest.fixture
def store(make_config: Any) -> Iterator[PepperpyVectorStore]:
    vectorstore = PepperpyVectorStore.create(
        make_config(), WordEmbeddings(), scope=MemoryScope.USER, scope_id="ana"
    )
    yield vectorstore
    vectorstore.close()


DOCS = [
    Document(page_content="Ana drinks green tea every morning", metadata={"n": 9, "tag": "drink"}),
    Document(page_content="Ana drinks black coffee at work", metadata={"n": 10, "tag": "drink"}),
    Document(page_content="Ana plays chess on Sundays", metadata={"n": 2.5, "nested": {"a": [1]}}),
]


def test_metadata_and_ids_round_trip_exactly(store: PepperpyVectorStore) -> None:
    ids = store.add_documents(DOCS, ids=["tea", "coffee", "chess"])
    assert store.get_by_ids(ids) == [
        Document(page_content=d.page_content, metadata=d.metadata, id=i)
        for d, i in zip(DOCS, ids, strict=True)
    ]


def test_filters_use_the_core_operators(store: PepperpyVectorStore) -> None:
    store.add_documents(DOCS, ids=["tea", "coffee", "chess"])
    high = store.similarity_search("Ana", k=5, filter={"n": {"$gte": 9}})
    assert {d.id for d in high} == {"tea", "coffee"}  # 9 < 10 numerically
    drinks = store.similarity_search("Ana", k=5, filter={"tag": {"$in": ["drink"]}})
    assert {d.id for d in drinks} == {"tea", "coffee"}


def test_relevance_scores_are_in_unit_range(store: PepperpyVectorStore) -> None:
    store.add_documents(DOCS)
    scored = store.similarity_search_with_relevance_scores("green tea morning", k=3)
    assert scored[0][0].page_content == DOCS[0].page_content
    assert all(0.0 <= score <= 1.0 for _, score in scored)
    assert scored[0][1] == pytest.approx(max(score for _, score in scored))
    distances = store.similarity_search_with_score("Ana drinks green tea every morning", k=1)
    assert distances[0][1] == pytest.approx(0.0, abs=1e-5)


async def test_scored_search_by_vector(store: PepperpyVectorStore) -> None:
    store.add_documents(DOCS)
    vector = WordEmbeddings().embed_query("Ana drinks green tea every morning")
    with_distance = store.similarity_search_with_score_by_vector(vector, k=3)
    assert with_distance[0][0].page_content == "Ana drinks green tea every morning"
    assert with_distance[0][1] == pytest.approx(0.0, abs=1e-5)  # distance: lower is closer
    relevance = store.similarity_search_by_vector_with_relevance_scores(vector, k=3)
    assert [d.page_content for d, _ in relevance] == [d.page_content for d, _ in with_distance]
    assert relevance[0][1] == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= score <= 1.0 for _, score in relevance)
    assert [score for _, score in relevance] == sorted((s for _, s in relevance), reverse=True)
    filtered = await store.asimilarity_search_by_vector_with_relevance_scores(
        vector, k=3, filter={"tag": "drink"}
    )
    assert len(filtered) == 2 and all(d.metadata["tag"] == "drink" for d, _ in filtered)
    assert await store.asimilarity_search_with_score_by_vector(vector, k=1) == with_distance[:1]


def test_retriever_search_types(store: PepperpyVectorStore) -> None:
    store.add_documents(DOCS, ids=["tea", "coffee", "chess"])
    for search_type, kwargs in [
        ("similarity", {"k": 1}),
        ("mmr", {"k": 1, "fetch_k": 3}),
        ("hybrid", {"k": 1}),
        ("similarity_score_threshold", {"score_threshold": 0.5, "k": 1}),
    ]:
        retriever = store.as_retriever(search_type=search_type, search_kwargs=kwargs)
        assert [d.id for d in retriever.invoke("green tea morning")] == ["tea"], search_type


async def test_async_mmr_prefers_diverse_results(store: PepperpyVectorStore) -> None:
    await store.aadd_texts(
        ["tea tea tea", "tea tea tea leaves", "chess openings"], ids=["t1", "t2", "c"]
    )
    diverse = await store.amax_marginal_relevance_search("tea", k=2, fetch_k=3, lambda_mult=0.1)
    assert [d.id for d in diverse][0] in {"t1", "t2"}
    assert "c" in [d.id for d in diverse]


async def test_hybrid_search_finds_words_the_vectors_miss(store: PepperpyVectorStore) -> None:
    await store.aadd_texts(["Patagonia hiking trip in March"], ids=["trip"])
    docs = await store.ahybrid_search("Patagnia", k=1)  # misspelt: trigram side finds it
    assert [d.id for d in docs] == ["trip"]


def test_each_store_sees_only_its_owner(make_config: Any) -> None:
    config = make_config()
    ana = PepperpyVectorStore.create(config, WordEmbeddings(), scope="user", scope_id="ana")
    bruno = PepperpyVectorStore.from_storage(ana.storage, scope=MemoryScope.USER, scope_id="bruno")
    try:
        ana.add_texts(["secret of ana"], ids=["a1"])
        bruno.add_texts(["secret of bruno"], ids=["b1"])
        assert [d.id for d in ana.similarity_search("secret", k=5)] == ["a1"]
        assert bruno.get_by_ids(["a1"]) == []
        bruno.delete(["a1"])  # not bruno's: nothing happens
        assert [d.id for d in ana.get_by_ids(["a1"])] == ["a1"]
        bruno.delete()  # all of bruno's
        assert bruno.similarity_search("secret", k=5) == []
        assert len(ana.similarity_search("secret", k=5)) == 1
    finally:
        ana.close()


def test_two_owners_may_use_the_same_ids(make_config: Any) -> None:
    ana = PepperpyVectorStore.create(make_config(), WordEmbeddings(), scope="user", scope_id="ana")
    bruno = PepperpyVectorStore.from_storage(ana.storage, scope=MemoryScope.USER, scope_id="bruno")
    try:
        ana.add_texts(["ana likes tea"], ids=["pref"])
        bruno.add_texts(["bruno likes coffee"], ids=["pref"])  # no takeover of Ana's "pref"
        assert [d.page_content for d in ana.get_by_ids(["pref"])] == ["ana likes tea"]
        assert [d.page_content for d in bruno.get_by_ids(["pref"])] == ["bruno likes coffee"]
        bruno.add_texts(["bruno likes espresso"], ids=["pref"])  # overwrites his own only
        assert [d.page_content for d in ana.get_by_ids(["pref"])] == ["ana likes tea"]
        bruno.delete(["pref"])
        assert bruno.get_by_ids(["pref"]) == []
        assert [d.page_content for d in ana.similarity_search("likes", k=5)] == ["ana likes tea"]
    finally:
        ana.close()


async def test_from_texts_and_afrom_texts(make_config: Any) -> None:
    sync_store = PepperpyVectorStore.from_texts(
        ["alpha"], WordEmbeddings(), [{"k": 1}], ids=["x"], config=make_config()
    )
    async_store = await PepperpyVectorStore.afrom_texts(
        ["beta"], WordEmbeddings(), ids=["y"], config=make_config(), type=MemoryType.EPISODIC
    )
    try:
        assert [d.id for d in sync_store.similarity_search("alpha", k=1)] == ["x"]
        docs = await async_store.asimilarity_search("beta", k=1)
        assert [d.id for d in docs] == ["y"]
        storage = async_store.storage
        with pytest.raises(MemoryError, match="started on another event loop"):
            await storage.retrieve("y")  # it lives on the adapter's loop, not this test's
        assert storage.loop is not None
        entry = await run_on_async(storage.loop, storage.retrieve("y"))
        assert entry.type is MemoryType.EPISODIC
    finally:
        sync_store.close()
        await async_store.aclose()


@pytest.mark.model
def test_vector_store_with_the_default_model(make_config: Any) -> None:
    store = PepperpyVectorStore.create(make_config())
    try:
        store.add_texts(
            ["Ana is allergic to peanuts", "The router needs a restart", "Refunds take 30 days"]
        )
        docs = store.similarity_search("which nuts should Ana avoid?", k=1)
        assert docs[0].page_content == "Ana is allergic to peanuts"
        assert len(store.embeddings.embed_query("hello")) == 384
    finally:
        store.close()


# --- chat history ---------------------------------------------------------------------------
CONVERSATION = [
    SystemMessage(content="You are a helpful assistant."),
    HumanMessage(content="My router keeps dropping the wifi connection."),
    AIMessage(
        content="",
        tool_calls=[{"name": "diagnose", "args": {"device": "router"}, "id": "call-1"}],
    ),
    ToolMessage(content="router firmware outdated", tool_call_id="call-1"),
    AIMessage(content="Your router firmware is outdated; update it from the admin page."),
    HumanMessage(content=[{"type": "text", "text": "Thanks! Also, I like green tea."}]),
]


@pytest.fixture
async def shared_storage(make_config: Any) -> Any:
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(64)) as storage:
        yield storage


async def test_history_round_trips_every_message_type_in_order(shared_storage: Any) -> None:
    history = PepperpyChatMessageHistory("session-1", storage=shared_storage)
    other = PepperpyChatMessageHistory("session-2", storage=shared_storage)
    await history.aadd_messages(CONVERSATION[:3])
    await history.aadd_messages(CONVERSATION[3:])
    await other.aadd_messages([HumanMessage(content="unrelated")])
    assert await history.aget_messages() == CONVERSATION
    assert [m.content for m in await other.aget_messages()] == ["unrelated"]
    entry = next(iter(await shared_storage.list(scope="session", scope_id="session-1")))
    assert entry.type is MemoryType.SHORT_TERM
    await history.aclear()
    assert await history.aget_messages() == []
    assert len(await other.aget_messages()) == 1


async def test_history_concurrent_appends_keep_every_message(shared_storage: Any) -> None:
    history = PepperpyChatMessageHistory("busy", storage=shared_storage)

    async def talk(task: int) -> None:
        for turn in range(5):
            await history.aadd_messages(
                [HumanMessage(content=f"t{task}-{turn}"), AIMessage(content=f"r{task}-{turn}")]
            )

    await asyncio.gather(*(talk(task) for task in range(8)))
    messages = await history.aget_messages()
    assert len(messages) == 80
    for task in range(8):
        mine = [m.content for m in messages if str(m.content)[1:].startswith(f"{task}-")]
        expected = [f"{kind}{task}-{turn}" for turn in range(5) for kind in ("t", "r")]
        assert mine == expected  # each task's turns in order, each reply after its question


async def test_history_is_searchable_by_meaning(shared_storage: Any) -> None:
    history = PepperpyChatMessageHistory("session-s", storage=shared_storage)
    await history.aadd_messages(CONVERSATION)
    found = await history.asearch("green tea", k=1)
    assert found[0].content == CONVERSATION[-1].content
    found = await history.asearch("router wifi", k=1, index=MemoryIndex.CONTEXTUAL)
    assert "router" in str(found[0].content)


async def test_history_finds_an_answer_by_the_question_before_it(shared_storage: Any) -> None:
    history = PepperpyChatMessageHistory("session-q", storage=shared_storage)
    await history.aadd_messages([HumanMessage(content="Which city did you pick for the offsite?")])
    await history.aadd_messages([AIMessage(content="Lisbon, in the second week of May.")])
    await history.aadd_messages([HumanMessage(content="Great, thanks!")])
    found = await history.asearch("offsite city", k=2, index=MemoryIndex.CONTEXTUAL)
    # The question holds the words; the answer after it is found by them too.
    assert any(str(message.content).startswith("Lisbon") for message in found)
    entry = next(
        e
        for e in await shared_storage.list(scope="session", scope_id="session-q")
        if e.value["content"].startswith("Lisbon")
    )
    assert entry.text.splitlines()[1] == "User: Which city did you pick for the offsite?"
    assert entry.metadata["conversation"]["position"] == 1
    assert entry.metadata["role"] == "ai" and entry.metadata["kind"] == "chat_message"


def test_history_in_a_real_chain(make_config: Any) -> None:
    config = make_config()
    histories: dict[str, PepperpyChatMessageHistory] = {}

    def history_for(session_id: str) -> PepperpyChatMessageHistory:
        if session_id not in histories:
            histories[session_id] = PepperpyChatMessageHistory(session_id, config=config)
        return histories[session_id]

    model = GenericFakeChatModel(
        messages=iter(
            [AIMessage(content="Hi Ana!"), AIMessage(content="You said your name is Ana.")]
        )
    )
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{question}")]
    )
    chain = RunnableWithMessageHistory(
        prompt | model,
        history_for,
        input_messages_key="question",
        history_messages_key="history",
    )
    settings = {"configurable": {"session_id": "chat-1"}}
    try:
        chain.invoke({"question": "Hello, I am Ana"}, config=settings)
        chain.invoke({"question": "What is my name?"}, config=settings)
        stored = histories["chat-1"].messages
        assert [m.content for m in stored] == [
            "Hello, I am Ana",
            "Hi Ana!",
            "What is my name?",
            "You said your name is Ana.",
        ]
        # a new history object (another process, say) sees the same conversation
        again = PepperpyChatMessageHistory("chat-1", config=config)
        assert [m.content for m in again.messages] == [m.content for m in stored]
        again.close()
    finally:
        for history in histories.values():
            history.close()


# --- memory retriever -----------------------------------------------------------------------
async def test_memory_retriever_recalls_one_users_memories(shared_storage: Any) -> None:
    await shared_storage.store_many(
        [
            {
                "key": "a1",
                "value": "Ana is allergic to peanuts",
                "scope": "user",
                "scope_id": "ana",
                "metadata": {"topic": "health"},
            },
            {
                "key": "a2",
                "value": "Ana likes green tea",
                "scope": "user",
                "scope_id": "ana",
                "type": "episodic",
            },
            {
                "key": "b1",
                "value": "Bruno is allergic to cats",
                "scope": "user",
                "scope_id": "bruno",
            },
        ]
    )
    retriever = PepperpyMemoryRetriever.from_storage(
        shared_storage, scope=MemoryScope.USER, scope_id="ana", k=5
    )
    docs = await retriever.ainvoke("allergic")
    assert {d.id for d in docs} == {"a1", "a2"} or {d.id for d in docs} == {"a1"}
    assert "b1" not in {d.id for d in docs}
    assert docs[0].id == "a1" and docs[0].metadata["topic"] == "health"
    assert 0 < docs[0].metadata["score"] <= 1
    narrow = PepperpyMemoryRetriever.from_storage(
        shared_storage,
        scope=MemoryScope.USER,
        scope_id="ana",
        types=frozenset({MemoryType.EPISODIC}),
        index_type=MemoryIndex.SEMANTIC,
    )
    assert [d.id for d in await narrow.ainvoke("tea")] == ["a2"]

    from langchain_core.tools import create_retriever_tool

    tool = create_retriever_tool(retriever, "recall", "Recall what you know about the user")
    output = await tool.ainvoke({"query": "peanuts"})
    assert "allergic to peanuts" in output


@pytest.mark.model
def test_a_script_that_never_closes_its_stores_exits_cleanly(tmp_path: Path) -> None:
    # What LangChain users write: stores, a LangGraph store and a chat history on the
    # embedded server, none of them closed.
    script = textwrap.dedent(
        """
        import time
        from langchain_pepperpy import PepperpyChatMessageHistory, PepperpyVectorStore
        from langgraph_pepperpy import PepperpyStore
        from pepperpy_pg_memory import PostgresConfig

        config = PostgresConfig()
        store = PepperpyVectorStore.create(config, scope="user", scope_id="ana")
        store.add_texts(["Ana is allergic to peanuts"])
        memory = PepperpyStore.create(config)
        memory.put(("users", "ana"), "k", {"text": "x"})
        history = PepperpyChatMessageHistory("s1", config=config)
        history.add_user_message("hi")
        print(time.time())
        """
    )
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PEPPERPY_PG_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    exited = time.time()
    assert done.returncode == 0
    assert done.stderr == ""  # no reconnect tracebacks while the server stops
    assert exited - float(done.stdout.strip()) < 5.0
    assert not (data / "postmaster.pid").exists()  # the embedded server stopped


def test_writes_and_deletes_land_in_history(store: PepperpyVectorStore) -> None:
    store.add_texts(["Ana drinks tea"], ids=["d1"])
    store.add_texts(["Ana drinks coffee"], ids=["d1"])  # the same id: an update
    store.delete(["d1"])
    storage = store.storage
    assert storage.loop is not None
    versions = run_on(storage.loop, storage.history("d1", scope="user", scope_id="ana"))
    assert [(v.version, v.operation, v.text) for v in versions] == [
        (3, "delete", "Ana drinks coffee"),
        (2, "update", "Ana drinks coffee"),
        (1, "create", "Ana drinks tea"),
    ]


def test_the_retriever_takes_a_ranking(store: PepperpyVectorStore) -> None:
    store.add_texts(["Ana drinks green tea", "Ana drinks green tea daily"], ids=["low", "high"])
    storage = store.storage
    assert storage.loop is not None
    run_on(
        storage.loop,
        storage.store(
            "high", "Ana drinks green tea daily", importance=1.0, scope="user", scope_id="ana"
        ),
    )
    run_on(
        storage.loop,
        storage.store("low", "Ana drinks green tea", importance=0.0, scope="user", scope_id="ana"),
    )
    ranking = Ranking(relevance=0.1, importance=1.0)
    retriever = store.as_retriever(search_kwargs={"k": 2, "ranking": ranking})
    assert [doc.id for doc in retriever.invoke("green tea")] == ["high", "low"]
    plain = store.as_retriever(search_kwargs={"k": 2})
    assert [doc.id for doc in plain.invoke("Ana drinks green tea")] == ["low", "high"]


@pytest.mark.parametrize("distance", ["l2", "inner_product"])
def test_scores_are_the_tables_own_distance(make_config: Any, distance: str) -> None:
    """On an l2 or inner-product table the scores are that distance (as pgvector gives it),
    and relevance follows LangChain's function for it, not cosine's."""
    embedder = HashingEmbedder(32)
    store = PepperpyVectorStore.create(make_config(distance=distance), embedder)
    try:
        store.add_texts(["green tea in the afternoon", "restart the router"], ids=["tea", "net"])
        query = "green tea"
        (first, score), _ = store.similarity_search_with_score(query, k=2)
        assert first.id == "tea"
        asked = asyncio.run(embedder.embed_query(query))
        stored = asyncio.run(embedder.embed_query("green tea in the afternoon"))
        expected = (
            float(np.linalg.norm(stored - asked)) if distance == "l2" else -float(stored @ asked)
        )
        assert score == pytest.approx(expected, abs=1e-4)
        relevant = store.similarity_search_with_relevance_scores(query, k=2)
        assert [d.id for d, _ in relevant] == ["tea", "net"]
        assert 1 >= relevant[0][1] > relevant[1][1] >= 0
    finally:
        store.close()


def test_a_document_id_always_names_its_document(make_config: Any) -> None:
    # Issue 34: consolidation folded a document into a core memory, and get_by_ids lost it.
    from pepperpy_pg_memory import MemoryQuotaError, MemoryValidationError
    from pepperpy_pg_memory.types import DOCUMENT_FIELD

    store = PepperpyVectorStore.create(
        make_config(max_memories_per_owner=3), WordEmbeddings(), scope=MemoryScope.USER,
        scope_id="ana",
    )  # fmt: skip
    ana = {"scope": MemoryScope.USER, "scope_id": "ana"}
    text = "Ana is allergic to peanuts"
    try:
        (doc,) = store.add_texts([text], [{"source": "notes"}])
        core = store._handle.call(lambda s: s.store("ana-allergy", text, importance=0.9, **ana))
        assert not core.deduplicated  # a document is never what a write folds into
        folded = store._handle.call(lambda s: s.store("again", text, dedupe=True, **ana))
        assert folded.key == "ana-allergy" and folded.deduplicated
        report = store._handle.call(lambda s: s.consolidate(include_managed=True, **ana))
        assert doc not in report.merged and doc not in report.merged_into.values()
        assert store.get_by_ids([doc]) == [
            Document(page_content=text, metadata={"source": "notes"}, id=doc)
        ]
        # Documents count toward the owner's quota, and being long-term are never evicted.
        store.add_texts(["Ana takes the 7:40 train"])
        with pytest.raises(MemoryQuotaError):
            store.add_texts(["Ana's third note"])
        assert len(store.get_by_ids([doc])) == 1
        # The marker is the adapter's alone.
        with pytest.raises(MemoryValidationError, match=DOCUMENT_FIELD):
            store._handle.call(
                lambda s: s.store("x", "y", metadata={DOCUMENT_FIELD: "mine"}, **ana)
            )
    finally:
        store.close()


def test_documents_from_before_the_mark_can_be_adopted(make_config: Any) -> None:
    # Documents written before 0.2 carry no mark: the vector store adopts them by id, and
    # from then on a write repeating one is not folded into it.
    store = PepperpyVectorStore.create(
        make_config(), WordEmbeddings(), scope=MemoryScope.USER, scope_id="ana"
    )
    ana = {"scope": MemoryScope.USER, "scope_id": "ana"}
    text = "Ana is allergic to peanuts"
    try:
        # As release 0.1's vector store wrote it: a plain memory of the owner.
        old = store._handle.call(lambda s: s.store("doc-1", text, metadata={"page": 3}, **ana))
        chat = {"key": "chat", "value": "hello", "managed_by": "chat-history"}
        store._handle.call(lambda s: s.store_many([chat], **ana))
        folded = store._handle.call(lambda s: s.store("probe", text, dedupe=True, **ana))
        assert folded.key == "doc-1" and folded.deduplicated  # unmarked: folded into
        assert store.adopt_documents(["doc-1", "chat", "missing", "doc-1"]) == ["doc-1"]
        assert store.adopt_documents(["doc-1"]) == []  # already marked
        after = store._handle.call(lambda s: s.retrieve("doc-1", **ana))
        assert (after.value, after.created_at, after.version) == (text, old.created_at, 3)
        history = store._handle.call(lambda s: s.history("doc-1", **ana))
        assert history[0].reason and "adopt_documents" in history[0].reason
        assert store.get_by_ids(["doc-1"]) == [
            Document(page_content=text, metadata={"page": 3}, id="doc-1")
        ]
        again = store._handle.call(lambda s: s.store("probe-2", text, dedupe=True, **ana))
        assert again.key == "probe-2" and not again.deduplicated
    finally:
        store.close()
