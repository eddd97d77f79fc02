"""Behaviours of LangGraph's own store tests (libs/checkpoint-postgres tests/test_store.py and
test_async_store.py) that PepperpyStore once differed on, written as tests of our own: labels
and keys with control or invisible characters, prefixes given as lists, put/delete bursts of
the same keys from many threads, and a TTL-refreshing burst."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)

from langgraph_pepperpy import PepperpyStore
from pepperpy_pg_memory import HashingEmbedder, MemoryConfigurationError


@pytest.fixture
def store(make_config: Any) -> Iterator[PepperpyStore]:
    memory_store = PepperpyStore.create(
        make_config(max_size=6),
        HashingEmbedder(32),
        ttl={"default_ttl": 5, "refresh_on_read": True},
    )
    yield memory_store
    memory_store.close()


@pytest.mark.parametrize(
    ("namespace", "key"),
    [
        (("users", "a\nb", "notes"), "line\nbreak"),
        (("tab\there",), "key\twith\ttabs"),
        (("users", "a\u200bna"), "zero\u200bwidth\u202eoverride"),
        (("bell\x07", "c1\x85"), "%2F/#"),
    ],
)
def test_any_label_and_key_round_trips_exactly(
    store: PepperpyStore, namespace: tuple[str, ...], key: str
) -> None:
    store.put(namespace, key, {"text": "kept exactly"})
    item = store.get(namespace, key)
    assert item is not None and (item.namespace, item.key) == (namespace, key)
    found = store.search(namespace[:1])
    assert [(i.namespace, i.key) for i in found] == [(namespace, key)]
    assert store.list_namespaces(prefix=namespace[:1]) == [namespace]
    store.delete(namespace, key)
    assert store.get(namespace, key) is None


def test_a_namespace_look_alike_is_another_namespace(store: PepperpyStore) -> None:
    store.put(("users", "ana"), "k", {"text": "plain"})
    store.put(("users", "a\u200bna"), "k", {"text": "look-alike"})
    assert store.get(("users", "ana"), "k").value == {"text": "plain"}  # type: ignore[union-attr]
    assert [i.value for i in store.search(("users", "ana"))] == [{"text": "plain"}]


BAD_NAMESPACES = [("notes.2024",), ("users", ""), ("users", 7)]


@pytest.mark.parametrize("namespace", BAD_NAMESPACES)
async def test_a_batch_with_a_bad_label_runs_none_of_its_ops(
    store: PepperpyStore, namespace: Any
) -> None:
    # Ops handed to batch()/abatch() skip BaseStore's own checks; LangGraph's stores check
    # each op's labels (a "." would address another namespace in theirs) and refuse the
    # whole batch before running any of it.
    await store.aput(("users", "ana"), "diet", {"text": "vegetarian"})
    refused = [
        GetOp(namespace, "diet"),
        PutOp(namespace, "diet", {"text": "vegan"}),
        PutOp(namespace, "diet", None),
        SearchOp(namespace),
        ListNamespacesOp((MatchCondition("prefix", namespace),)),
        ListNamespacesOp((MatchCondition("suffix", namespace),)),
    ]
    for op in refused:
        with pytest.raises(InvalidNamespaceError):
            await store.abatch([PutOp(("staged",), "first", {"text": "x"}), op])
        with pytest.raises(InvalidNamespaceError):
            await asyncio.to_thread(store.batch, [PutOp(("staged",), "first", {"text": "x"}), op])
    assert await store.aget(("staged",), "first") is None
    item = await store.aget(("users", "ana"), "diet")
    assert item is not None and item.value == {"text": "vegetarian"}


def test_like_wildcards_in_labels_are_plain_characters(store: PepperpyStore) -> None:
    namespaces = [("team_%",), ("team_%", "child"), ("teamX%",), ("TEAM_%",)]
    for namespace in namespaces:
        store.put(namespace, "k", {"text": "n"})
    assert {item.namespace for item in store.search(())} == set(namespaces)
    assert {item.namespace for item in store.search(("team_%",))} == set(namespaces[:2])
    assert store.list_namespaces(prefix=("team_%", "*")) == [("team_%", "child")]


def test_put_and_delete_of_the_same_keys_from_many_threads(store: PepperpyStore) -> None:
    """LangGraph's burst: 10 threads putting and deleting a few keys (a re-put raced a
    delete for the next version number, and lost with a duplicate key)."""
    namespace = ("burst",)

    def work(thread: int) -> int:
        done = 0
        for step in range(60):
            key = f"k{(thread + step) % 5}"
            if step % 3 == 2:
                store.delete(namespace, key)
            else:
                store.put(namespace, key, {"thread": thread, "step": step})
            done += 1
        return done

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert sum(pool.map(work, range(10))) == 600


async def test_a_ttl_refreshing_burst_has_no_failures(store: PepperpyStore) -> None:
    """Concurrent puts, gets (each refreshing its TTL), searches and deletes on a few keys:
    the TTL refresh once deadlocked with the writers."""
    namespace = ("users", "ana")

    async def work(task: int) -> None:
        for step in range(30):
            key = f"k{(task + step) % 6}"
            kind = step % 4
            if kind == 0:
                await store.aput(namespace, key, {"text": f"note {task} {step}"})
            elif kind == 1:
                await store.aget(namespace, key, refresh_ttl=True)
            elif kind == 2:
                await store.asearch(namespace, query="note", limit=5, refresh_ttl=True)
            else:
                await store.adelete(namespace, key)

    await asyncio.gather(*(work(task) for task in range(20)))


class _FixedVectors:
    """Vectors of different lengths, so that cosine, Euclidean distance and inner product
    each order them differently: the query is (1, 0, 0)."""

    name = "fixed-test-vectors"
    dimension = 3
    vectors = {
        "shortnear": (0.45, 0.05, 0.0),  # nearest in angle
        "middle": (1.0, 0.5, 0.0),  # nearest in space
        "longfar": (3.0, 3.0, 0.0),  # largest inner product
    }

    def _vector(self, text: str) -> np.ndarray:
        for word, vector in self.vectors.items():
            if word in text:
                return np.array(vector, dtype=np.float32)
        return np.array((0.0, 0.0, 1.0), dtype=np.float32)

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vector(text) for text in texts])

    async def embed_query(self, text: str) -> np.ndarray:
        return np.array((1.0, 0.0, 0.0), dtype=np.float32)


def _langgraph_score(distance: str, vector: tuple[float, ...]) -> float:
    """The score LangGraph's PostgresStore gives for ``distance`` against (1, 0, 0)."""
    v, q = np.array(vector), np.array((1.0, 0.0, 0.0))
    if distance == "l2":
        return -float(np.linalg.norm(v - q))
    if distance == "inner_product":
        return float(v @ q)
    return float(v @ q / np.linalg.norm(v))


@pytest.mark.parametrize(
    ("distance", "order"),
    [
        ("cosine", ["shortnear", "middle", "longfar"]),
        ("l2", ["middle", "shortnear", "longfar"]),
        ("inner_product", ["longfar", "middle", "shortnear"]),
    ],
)
def test_each_distance_type_orders_and_scores_as_langgraph(
    make_config: Any, distance: str, order: list[str]
) -> None:
    config = make_config()
    memory = PepperpyStore.create(
        config,
        _FixedVectors(),
        index={"dims": 3, "distance_type": distance},  # type: ignore[typeddict-unknown-key]
    )
    try:
        assert memory.storage.layout.distance == distance
        for word in _FixedVectors.vectors:
            memory.put(("docs",), word, {"text": word})
        found = memory.search(("docs",), query="anything", limit=3)
        assert [item.key for item in found] == order
        for item in found:
            expected = _langgraph_score(distance, _FixedVectors.vectors[item.key])
            assert item.score == pytest.approx(expected, abs=1e-4)
    finally:
        memory.close()
    # The table keeps its distance: a store asking for another is refused, never ignored.
    other = "cosine" if distance != "cosine" else "l2"
    with pytest.raises(MemoryConfigurationError, match="compares vectors by"):
        PepperpyStore.create(config, _FixedVectors(), index={"dims": 3, "distance_type": other})  # type: ignore[typeddict-unknown-key]


def test_a_distance_pgvector_cannot_index_for_floats_is_refused(make_config: Any) -> None:
    with pytest.raises(MemoryConfigurationError, match="hamming"):
        PepperpyStore.create(make_config(), _FixedVectors(), index={"distance_type": "hamming"})  # type: ignore[typeddict-unknown-key]


@pytest.mark.parametrize("distance", ["cosine", "l2", "inner_product"])
def test_half_precision_vectors_as_langgraph_configures_them(
    make_config: Any, distance: str
) -> None:
    config = make_config()
    index: Any = {
        "dims": 3,
        "distance_type": distance,
        "ann_index_config": {"kind": "hnsw", "vector_type": "halfvec", "m": 24},
    }
    memory = PepperpyStore.create(config, _FixedVectors(), index=index)
    try:
        layout = memory.storage.layout
        assert (layout.vector_type, layout.hnsw_m) == ("halfvec", 24)
        for word in _FixedVectors.vectors:
            memory.put(("docs",), word, {"text": word})
        for item in memory.search(("docs",), query="anything", limit=3):
            expected = _langgraph_score(distance, _FixedVectors.vectors[item.key])
            assert item.score == pytest.approx(expected, abs=2e-3)
    finally:
        memory.close()
    # The table keeps its type: a store asking for the other is refused, never ignored.
    full: Any = {**index, "ann_index_config": {"vector_type": "vector"}}
    with pytest.raises(MemoryConfigurationError, match="stores its vectors as halfvec"):
        PepperpyStore.create(config, _FixedVectors(), index=full)


@pytest.mark.parametrize(
    ("ann", "refusal"),
    [
        ({"kind": "ivfflat", "nlist": 10}, "indexes vectors with HNSW"),
        ({"vector_type": "bit"}, "float vectors"),
    ],
)
def test_an_index_this_store_cannot_build_is_refused(
    make_config: Any, ann: dict[str, Any], refusal: str
) -> None:
    index: Any = {"dims": 3, "ann_index_config": ann}
    with pytest.raises(MemoryConfigurationError, match=refusal):
        PepperpyStore.create(make_config(), _FixedVectors(), index=index)
