"""The behaviour LangGraph's ``BaseStore`` promises its callers, checked on ``PepperpyStore``.

Written from LangGraph's documented contract and the behaviours its own store tests exercise
(batch ordering, get/put/delete, search with query, filter, limit and offset, namespace
listing, TTLs, concurrency), in our own words. Where we differ on purpose it is pinned here and
said in the README: an expired item is invisible at once, not when a sweeper next runs.
Bursts and threads are in ``test_bursts.py``; a compiled graph is in ``test_langgraph_store.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchItem,
    SearchOp,
)

from langgraph_pepperpy import PepperpyStore
from langgraph_pepperpy.store import memory_key
from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryConfigurationError,
    MemoryValidationError,
    PostgresStorage,
)

DIMENSION = 256


@pytest.fixture
def store(make_config: Any) -> Iterator[PepperpyStore]:
    memory_store = PepperpyStore.create(make_config(), HashingEmbedder(DIMENSION))
    yield memory_store
    memory_store.close()


def _keys(items: list[SearchItem]) -> list[str]:
    return [item.key for item in items]


# --- batches ----------------------------------------------------------------------------------
def test_a_batch_returns_one_result_per_operation_in_order(store: PepperpyStore) -> None:
    store.put(("test", "foo"), "key1", {"data": "value1"})
    store.put(("test", "bar"), "key2", {"data": "value2"})
    results = store.batch(
        [
            GetOp(("test", "foo"), "key1"),
            PutOp(("test", "bar"), "key2", {"data": "value2b"}),
            SearchOp(("test",), filter={"data": "value1"}, limit=10),
            ListNamespacesOp(limit=10),
            GetOp(("test",), "missing"),
            GetOp(("test", "bar"), "key2"),
        ]
    )
    assert len(results) == 6
    first = results[0]
    assert isinstance(first, Item) and first.value == {"data": "value1"}
    assert results[1] is None
    assert isinstance(results[2], list) and _keys(results[2]) == ["key1"]
    assert isinstance(results[3], list)
    assert sorted(results[3]) == [("test", "bar"), ("test", "foo")]
    assert results[4] is None
    # A get after a put in the same batch sees the put.
    last = results[5]
    assert isinstance(last, Item) and last.value == {"data": "value2b"}


def test_a_put_of_none_in_a_batch_deletes(store: PepperpyStore) -> None:
    store.put(("test",), "gone", {"data": 1})
    results = store.batch(
        [
            PutOp(("test",), "kept", {"data": 2}),
            PutOp(("test",), "gone", None),
            PutOp(("test",), "never", None),
        ]
    )
    assert results == [None, None, None]
    assert store.get(("test",), "gone") is None
    assert store.get(("test",), "never") is None
    kept = store.get(("test",), "kept")
    assert kept is not None and kept.value == {"data": 2}


def test_the_last_put_of_a_key_in_a_batch_wins(store: PepperpyStore) -> None:
    store.batch(
        [
            PutOp(("test",), "k", {"n": 1}),
            PutOp(("test",), "k", {"n": 2}),
            PutOp(("test",), "x", None),
            PutOp(("test",), "x", {"n": 3}),
        ]
    )
    assert store.get(("test",), "k").value == {"n": 2}  # type: ignore[union-attr]
    assert store.get(("test",), "x").value == {"n": 3}  # type: ignore[union-attr]


# --- items ------------------------------------------------------------------------------------
def test_put_get_update_delete_keep_their_moments(store: PepperpyStore) -> None:
    namespace = ("test", "documents")
    store.put(namespace, "doc1", {"title": "Test", "content": "Hello"})
    item = store.get(namespace, "doc1")
    assert item is not None
    assert (item.namespace, item.key, item.value) == (
        namespace,
        "doc1",
        {"title": "Test", "content": "Hello"},
    )
    assert item.created_at.tzinfo is not None
    store.put(namespace, "doc1", {"title": "Updated"})
    updated = store.get(namespace, "doc1")
    assert updated is not None and updated.value == {"title": "Updated"}
    assert updated.updated_at > item.updated_at
    assert updated.created_at == item.created_at
    assert store.get(("test", "other"), "doc1") is None
    store.delete(namespace, "doc1")
    assert store.get(namespace, "doc1") is None
    store.delete(namespace, "doc1")  # deleting what is gone is not an error


def test_invalid_namespaces_are_refused(store: PepperpyStore) -> None:
    for namespace in [(), ("the", "thing.about"), ("some", "fun", ""), ("langgraph", "x")]:
        with pytest.raises(InvalidNamespaceError):
            store.put(namespace, "k", {"a": 1})
    # "langgraph" is reserved only as the first label; a batch may still write under it.
    store.put(("foo", "langgraph", "foo"), "bar", {"a": 1})
    assert store.get(("foo", "langgraph", "foo"), "bar") is not None
    store.batch([PutOp(("langgraph", "foo"), "bar", {"a": 2})])
    assert store.get(("langgraph", "foo"), "bar").value == {"a": 2}  # type: ignore[union-attr]
    assert store.search(("langgraph", "foo"))[0].value == {"a": 2}


async def test_async_calls_check_namespaces_and_apply_ttls_as_base_store_does(
    make_config: Any,
) -> None:
    # aget/aput/adelete/asearch are our own (a burst's calls are queued as they are); they
    # must refuse and default exactly as BaseStore's, which the sync calls go through.
    storage = PostgresStorage(make_config(), HashingEmbedder(DIMENSION))
    await storage.start()  # on this loop: the store's calls run here, with no thread
    store = PepperpyStore(storage, ttl={"default_ttl": 30, "refresh_on_read": False})
    try:
        for namespace in [(), ("the", "thing.about"), ("some", "fun", ""), ("langgraph", "x")]:
            with pytest.raises(InvalidNamespaceError):
                await store.aput(namespace, "k", {"a": 1})
        for bad in [("the", "thing.about"), ("some", "", "x"), ("nul\x00",), (1,)]:
            with pytest.raises(InvalidNamespaceError):
                await store.aget(bad, "k")  # type: ignore[arg-type]
            with pytest.raises(InvalidNamespaceError):
                await store.adelete(bad, "k")  # type: ignore[arg-type]
            with pytest.raises(InvalidNamespaceError):
                await store.asearch(bad)  # type: ignore[arg-type]
        await store.aput(("users", "ana"), "default", {"text": "thirty minutes"})
        await store.aput(("users", "ana"), "forever", {"text": "never expires"}, ttl=None)
        await store.aput(("users", "ana"), "short", {"text": "five minutes"}, ttl=5)
        await store.aput(("users", "ana"), 7, {"text": "a key that is not a string"})  # type: ignore[arg-type]
        entries = await storage.retrieve_many(
            [memory_key(("users", "ana"), k) for k in ("default", "forever", "short", "7")],
            scope="user",
            scope_id="ana",
        )
        lifetimes = {
            key: None if e.expires_at is None else (e.expires_at - e.updated_at).total_seconds()
            for key, e in entries.items()
        }
        assert lifetimes == {
            memory_key(("users", "ana"), "default"): pytest.approx(30 * 60, abs=5),
            memory_key(("users", "ana"), "forever"): None,
            memory_key(("users", "ana"), "short"): pytest.approx(5 * 60, abs=5),
            memory_key(("users", "ana"), "7"): pytest.approx(30 * 60, abs=5),
        }
        found = await store.asearch(("users",), query="minutes", limit=2, offset=1)
        assert len(found) == 2
        assert (await store.aget(("users", "ana"), 7)).value == {  # type: ignore[arg-type,union-attr]
            "text": "a key that is not a string"
        }
        await store.adelete(("users", "ana"), "short")
        assert await store.aget(("users", "ana"), "short") is None
    finally:
        await store.aclose()
        await storage.close()


def test_values_and_labels_in_any_script(store: PepperpyStore) -> None:
    texts = ["这是中文", "これは日本語です", "이건 한국어야", "Это русский", "यह रूसी है"]
    namespace = ("user_123", "memórias")
    for number, text in enumerate(texts):
        store.put(namespace, str(number), {"text": text})
    for number, text in enumerate(texts):
        assert store.search(namespace, query=text)[0].key == str(number)
        assert store.get(namespace, str(number)).value == {"text": text}  # type: ignore[union-attr]


# --- search -----------------------------------------------------------------------------------
def test_search_without_query_lists_a_namespace_prefix(store: PepperpyStore) -> None:
    store.put(("test", "docs"), "doc1", {"author": "Alice"})
    store.put(("test", "docs"), "doc2", {"author": "Bob"})
    store.put(("test", "doc"), "doc3", {"author": "Alice"})  # a label that prefixes another
    store.put(("test", "images"), "img1", {"author": "Alice"})
    store.put(("other",), "o1", {"author": "Alice"})
    assert len(store.search(("test",))) == 4
    assert sorted(_keys(store.search(("test", "docs")))) == ["doc1", "doc2"]
    assert _keys(store.search(("test", "doc"))) == ["doc3"]
    assert sorted(_keys(store.search(("test",), filter={"author": "Alice"}))) == [
        "doc1",
        "doc3",
        "img1",
    ]
    # Newest first, pages that neither skip nor repeat.
    everything = store.search(("test",), limit=10)
    assert [i.updated_at for i in everything] == sorted(
        (i.updated_at for i in everything), reverse=True
    )
    pages = store.search(("test",), limit=2) + store.search(("test",), limit=2, offset=2)
    assert _keys(pages) == _keys(everything)
    assert all(item.score is None for item in everything)
    assert len(store.search(())) == 5  # the empty prefix is everything


def test_filters_compare_numbers_as_numbers_and_strings_as_strings(
    store: PepperpyStore,
) -> None:
    namespace = ("test", "scores")
    for key, score in [("a", 2), ("b", 9), ("c", 10), ("d", 11), ("e", 9.5)]:
        store.put(namespace, key, {"score": score, "name": f"item {key}"})

    def scores(filter: dict[str, Any]) -> list[float]:
        return sorted(item.value["score"] for item in store.search(namespace, filter=filter))

    assert scores({"score": {"$gte": 10}}) == [10, 11]
    assert scores({"score": {"$gt": 9}}) == [9.5, 10, 11]
    assert scores({"score": {"$lt": 10}}) == [2, 9, 9.5]
    assert scores({"score": {"$lte": 9}}) == [2, 9]
    assert scores({"score": {"$eq": 10}}) == [10]
    assert scores({"score": {"$ne": 10}}) == [2, 9, 9.5, 11]
    assert scores({"score": 9}) == [9]
    assert scores({"score": {"$gte": 9}, "name": "item b"}) == [9]
    names = sorted(
        item.value["name"] for item in store.search(namespace, filter={"name": {"$gt": "item c"}})
    )
    assert names == ["item d", "item e"]
    # As documented beside LangGraph's stores: a string operand matches strings only, $ne
    # matches items without the field too, and a boolean has no order.
    store.put(namespace, "f", {"score": "11", "name": "item f"})
    store.put(namespace, "g", {"name": "item g"})
    strings = store.search(namespace, filter={"score": {"$gte": "10"}})
    assert [item.key for item in strings] == ["f"]
    unequal = {item.key for item in store.search(namespace, filter={"score": {"$ne": 10}})}
    assert unequal == {"a", "b", "d", "e", "f", "g"}
    with pytest.raises(MemoryValidationError, match="takes a number or a string"):
        store.search(namespace, filter={"score": {"$gt": True}})


def test_semantic_search_ranks_filters_and_pages(store: PepperpyStore) -> None:
    docs = {
        "doc1": {"text": "red apple", "color": "red", "score": 4.5},
        "doc2": {"text": "red car", "color": "red", "score": 3.0},
        "doc3": {"text": "green apple", "color": "green", "score": 4.0},
        "doc4": {"text": "blue car", "color": "blue", "score": 3.5},
    }
    for key, value in docs.items():
        store.put(("test",), key, value)
    red_apples = store.search(("test",), query="apple", filter={"color": "red"})
    assert _keys(red_apples) == ["doc1", "doc2"]
    assert _keys(store.search(("test",), query="car", filter={"color": "red"})) == [
        "doc2",
        "doc1",
    ]
    high = store.search(("test",), query="blue", filter={"score": {"$gt": 3.2}})
    assert _keys(high)[0] == "doc4" and len(high) == 3
    both = store.search(("test",), query="apple", filter={"score": {"$gte": 4.0}, "color": "green"})
    assert _keys(both) == ["doc3"]
    # Pages of a semantic search.
    for i in range(5):
        store.put(("pages",), f"p{i}", {"text": f"test document number {i}"})
    first = store.search(("pages",), query="test", limit=2)
    second = store.search(("pages",), query="test", limit=2, offset=2)
    assert len(first) == len(second) == 2
    assert not set(_keys(first)) & set(_keys(second))
    assert len(store.search(("pages",), query="test", limit=10)) == 5


def test_semantic_scores_are_cosine_similarities(store: PepperpyStore) -> None:
    embedder = HashingEmbedder(DIMENSION)
    store.put(("test",), "doc", {"text": "aaa bbb"})
    for query in ["aaa", "aaa bbb", "ccc", "poisson"]:
        hits = store.search(("test",), query=query)
        assert len(hits) == 1
        expected = float(
            np.dot(
                asyncio.run(embedder.embed_query(query)),
                asyncio.run(embedder.embed_query("aaa bbb")),
            )
        )
        assert hits[0].score == pytest.approx(expected, abs=1e-4)


def test_queries_that_are_empty_long_or_odd(store: PepperpyStore) -> None:
    store.put(("test",), "doc1", {"text": "test document"})
    for query in ["", None, "test " * 100, "test!@#$%^&*()", "' OR 1=1 --", "日本語"]:
        assert _keys(store.search(("test",), query=query)) == ["doc1"]


def test_an_update_re_embeds_and_index_false_is_never_matched(store: PepperpyStore) -> None:
    store.put(("test",), "doc1", {"text": "zany zebra Xerxes"})
    store.put(("test",), "doc2", {"text": "something about dogs"})
    before = store.search(("test",), query="zany Xerxes")
    assert before[0].key == "doc1"
    store.put(("test",), "doc1", {"text": "new text about dogs"})
    after = {h.key: h.score for h in store.search(("test",), query="zany Xerxes")}
    assert after["doc1"] < before[0].score  # type: ignore[operator]
    store.put(("test",), "doc3", {"text": "new text about dogs"}, index=False)
    assert "doc3" not in _keys(store.search(("test",), query="new text about dogs", limit=10))
    assert "doc3" in _keys(store.search(("test",), limit=10))


# --- namespaces -------------------------------------------------------------------------------
NAMESPACES = [
    ("a", "b", "c"),
    ("a", "b", "d", "e"),
    ("a", "b", "d", "i"),
    ("a", "b", "f"),
    ("a", "c", "f"),
    ("b", "a", "f"),
    ("users", "123"),
    ("users", "456", "settings"),
    ("admin", "users", "789"),
]


def test_list_namespaces_by_prefix_suffix_wildcards_and_depth(store: PepperpyStore) -> None:
    for number, namespace in enumerate(NAMESPACES):
        store.put(namespace, f"id_{number}", {"data": number})
    under_ab = [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f")]
    assert store.list_namespaces(prefix=("a", "b")) == under_ab
    assert store.list_namespaces(suffix=("f",)) == [
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
    ]
    assert store.list_namespaces(prefix=("a",), suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "b", "f"),
    ]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(suffix=("*", "f")) == [
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
    ]
    assert store.list_namespaces(prefix=("users", "*")) == [
        ("users", "123"),
        ("users", "456", "settings"),
    ]
    assert store.list_namespaces(prefix=("*", "users"), suffix=("*", "settings")) == []
    assert store.list_namespaces(prefix=("nonexistent",)) == []
    assert store.list_namespaces(prefix=("users", "123")) == [("users", "123")]
    assert store.list_namespaces(max_depth=2) == [
        ("a", "b"),
        ("a", "c"),
        ("admin", "users"),
        ("b", "a"),
        ("users", "123"),
        ("users", "456"),
    ]
    assert store.list_namespaces() == sorted(NAMESPACES)
    assert store.list_namespaces(prefix=("a", "b"), limit=2) == under_ab[:2]
    assert store.list_namespaces(prefix=("a", "b"), offset=2) == under_ab[2:]
    match = [MatchCondition("suffix", ("public",))]
    assert store.batch([ListNamespacesOp(match_conditions=tuple(match))]) == [[]]


def test_list_namespaces_pages_and_an_empty_store(store: PepperpyStore) -> None:
    assert store.list_namespaces() == []
    for i in range(20):
        store.put(("namespace", f"sub_{i:02d}"), f"id_{i}", {"n": i})
    for offset in (0, 5, 15):
        assert store.list_namespaces(prefix=("namespace",), limit=5, offset=offset) == [
            ("namespace", f"sub_{i:02d}") for i in range(offset, offset + 5)
        ]
    # A namespace whose items are all deleted is no longer listed.
    store.delete(("namespace", "sub_00"), "id_0")
    assert ("namespace", "sub_00") not in store.list_namespaces(prefix=("namespace",))


# --- TTL ----------------------------------------------------------------------------------------
def test_expired_items_are_invisible_at_once_without_a_sweeper(make_config: Any) -> None:
    # LangGraph's own stores keep an expired item readable until a sweeper deletes it; ours
    # hides it the moment it expires (the README says so).
    store = PepperpyStore.create(make_config(), HashingEmbedder(DIMENSION))
    try:
        # Three seconds: the read just after the write must come before it expires, even on
        # a loaded machine.
        store.put(("test",), "brief", {"text": "short lived"}, ttl=3 / 60)
        store.put(("test",), "lasting", {"text": "long lived"})
        assert store.get(("test",), "brief") is not None
        time.sleep(3.5)
        assert store.get(("test",), "brief") is None
        assert _keys(store.search(("test",), query="short lived")) == ["lasting"]
        assert _keys(store.search(("test",))) == ["lasting"]
        assert store.list_namespaces() == [("test",)]
    finally:
        store.close()


async def test_reads_refresh_a_ttl_and_a_default_ttl_applies(make_config: Any) -> None:
    # Read from the expiry the server records, not from sleeps: a loaded machine is slow,
    # and a refresh moves the expiry all the same (every refresh: no slack).
    storage = PostgresStorage(make_config(ttl_refresh_slack=0), HashingEmbedder(DIMENSION))
    await storage.start()
    store = PepperpyStore(storage, ttl={"default_ttl": 2, "refresh_on_read": True})

    async def expiry(key: str) -> Any:
        (entry,) = await storage.list(keys=[memory_key(("test",), key)])
        return entry.expires_at

    try:
        await store.aput(("test",), "kept", {"text": "kept alive by reads"})
        await store.aput(("test",), "left", {"text": "left alone"})
        await store.aput(("test",), "forever", {"text": "no expiry"}, ttl=None)
        (stored,) = await storage.list(keys=[memory_key(("test",), "kept")])
        assert stored.expires_at - stored.updated_at == timedelta(minutes=2)  # the default
        kept, left = await expiry("kept"), await expiry("left")

        assert await store.aget(("test",), "left", refresh_ttl=False) is not None
        assert await expiry("left") == left
        assert await store.aget(("test",), "kept") is not None
        assert await expiry("kept") > kept
        kept = await expiry("kept")
        assert [item.key for item in await store.asearch(("test",), query="kept alive")]
        assert await expiry("kept") > kept  # a search's results are refreshed too
        assert await store.aget(("test",), "forever") is not None
        assert await expiry("forever") is None  # a refresh never gives one an expiry
    finally:
        await store.aclose()


# --- concurrency ------------------------------------------------------------------------------
async def test_concurrent_puts_deletes_and_puts_apply_in_call_order(store: PepperpyStore) -> None:
    docs = [(f"doc{i}", {"text": f"color {i % 5} item {i % 7}", "index": i}) for i in range(50)]
    await asyncio.gather(
        *[store.aput(("test",), key, value) for key, value in docs],
        *[store.adelete(("test",), key) for key, _ in docs],
        *[store.aput(("test",), key, value) for key, value in docs],
    )
    items = await asyncio.gather(*(store.aget(("test",), key) for key, _ in docs))
    assert [item.value if item else None for item in items] == [value for _, value in docs]
    hits = await asyncio.gather(
        store.asearch(("test",), query="color 1", filter={"index": {"$gt": 25}}),
        store.asearch(("test",), query="item 3", filter={"index": {"$lte": 10}}),
    )
    assert hits[0] and all(h.value["index"] > 25 for h in hits[0])
    assert hits[1] and all(h.value["index"] <= 10 for h in hits[1])
    same = await asyncio.gather(store.aget(("test",), "doc1"), store.aget(("test",), "doc1"))
    assert same[0] == same[1]


async def test_async_and_sync_calls_see_the_same_items(store: PepperpyStore) -> None:
    await store.aput(("test",), "a", {"n": 1})
    assert store.get(("test",), "a") is not None  # the sync call runs on the store's thread
    await asyncio.to_thread(store.put, ("test",), "b", {"n": 2})
    assert (await store.aget(("test",), "b")).value == {"n": 2}  # type: ignore[union-attr]
    assert sorted(_keys(await store.asearch(("test",)))) == ["a", "b"]
    await store.adelete(("test",), "a")
    assert await store.aget(("test",), "a") is None
    assert store.ttl_config is None and store.supports_ttl


# --- per-field embedding ----------------------------------------------------------------------
def _scored(store: PepperpyStore, query: str) -> dict[str, float]:
    return {hit.key: hit.score or 0.0 for hit in store.search(("test",), query=query, limit=10)}


def test_each_indexed_field_is_embedded_apart_and_the_best_counts(make_config: Any) -> None:
    store = PepperpyStore.create(
        make_config(), HashingEmbedder(DIMENSION), index={"fields": ["key0", "key1", "key3"]}
    )
    try:
        # doc1 lacks key0: a missing field is skipped, not an error.
        store.put(("test",), "doc1", {"key1": "xxx", "key2": "yyy", "key3": "zzz"})
        store.put(("test",), "doc2", {"key0": "uuu", "key1": "vvv", "key2": "www", "key3": "xxx"})
        both = _scored(store, "xxx")  # doc1.key1 and doc2.key3: equally good
        assert both["doc1"] == pytest.approx(both["doc2"], abs=1e-3)
        assert both["doc1"] == pytest.approx(1.0, abs=1e-3)
        only_doc2 = _scored(store, "uuu")
        assert max(only_doc2, key=only_doc2.__getitem__) == "doc2"
        assert only_doc2["doc2"] == pytest.approx(1.0, abs=1e-3)
        assert only_doc2.get("doc1", 0) < 0.5
        only_doc1 = _scored(store, "zzz")
        assert max(only_doc1, key=only_doc1.__getitem__) == "doc1"
        unindexed = _scored(store, "www")  # key2 is not indexed
        assert all(score < 0.5 for score in unindexed.values())
    finally:
        store.close()


def test_a_puts_own_fields_override_the_stores(make_config: Any) -> None:
    store = PepperpyStore.create(
        make_config(), HashingEmbedder(DIMENSION), index={"fields": ["key17"]}
    )
    try:
        store.put(
            ("test",), "doc3", {"key0": "aaa", "key1": "bbb", "key2": "ccc"}, ["key0", "key1"]
        )
        store.put(
            ("test",), "doc4", {"key0": "eee", "key1": "bbb", "key3": "ggg"}, ["key1", "key3"]
        )
        assert store.search(("test",), query="aaa")[0].key == "doc3"
        assert store.search(("test",), query="ggg")[0].key == "doc4"
        shared = _scored(store, "bbb")
        assert shared["doc3"] == pytest.approx(shared["doc4"], abs=1e-3)
        assert all(score < 0.9 for score in _scored(store, "ccc").values())
        store.put(("test",), "doc5", {"key0": "hhh", "key1": "iii"}, index=False)
        listed = store.search(("test",))
        assert len(listed) == 3 and all(item.score is None for item in listed)
        assert "doc5" not in _keys(store.search(("test",), query="hhh"))
        # Nested paths and every element of a list, in LangGraph's path syntax.
        store.put(
            ("test",),
            "doc6",
            {"steps": [{"say": "first step"}, {"say": "last step"}]},
            ["steps[*].say"],
        )
        assert _scored(store, "last step")["doc6"] == pytest.approx(1.0, abs=1e-3)
    finally:
        store.close()


def test_the_index_config_is_checked_against_the_table(make_config: Any) -> None:
    embedder = HashingEmbedder(DIMENSION)

    def embed(texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in asyncio.run(embedder.embed_documents(texts))]

    config = make_config()
    with pytest.raises(MemoryConfigurationError, match="dims"):
        PepperpyStore.create(config, HashingEmbedder(DIMENSION), index={"dims": 99})
    with pytest.raises(MemoryConfigurationError, match="once"):
        PepperpyStore.create(config, HashingEmbedder(DIMENSION), index={"embed": embed})
    # index["embed"] alone chooses the embedder of a new store.
    store = PepperpyStore.create(
        config, index={"dims": DIMENSION, "embed": embed, "fields": ["title", "body"]}
    )
    try:
        # The config as given, as LangGraph's stores keep it.
        assert store.index_config is not None and store.index_config["embed"] is embed
        store.put(("test",), "a", {"title": "quiet lake", "body": "morning swim"})
        assert _scored(store, "morning swim")["a"] == pytest.approx(1.0, abs=1e-3)
        # A distance the table's index does not use is refused, never silently ignored.
        for distance in ("l2", "inner_product"):
            with pytest.raises(MemoryConfigurationError, match="distance_type"):
                PepperpyStore(store.storage, index={"distance_type": distance})  # type: ignore[typeddict-unknown-key]
        PepperpyStore(store.storage, index={"distance_type": "cosine"})  # type: ignore[typeddict-unknown-key]
        # Another model may not write into this table's index.
        with pytest.raises(MemoryConfigurationError, match="one model"):
            PepperpyStore(store.storage, index={"embed": embed})
    finally:
        store.close()
