"""An owner's own vector index: built without blocking writes, used by that owner's searches
(planned for its values), dropped on request."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryValidationError,
    PostgresStorage,
)
from pepperpy_pg_memory.search_sql import Page
from pepperpy_pg_memory.sql import Query

DIMENSION = 16


def _vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def _plan(store: PostgresStorage[str, Any], scope_id: str) -> str:
    """The plan of a semantic search within ``scope_id``, with sequential scans priced out
    (on a table this small a scan would win whatever the indexes)."""
    started = store._ready
    statement = started.searches.semantic_search(
        _vectors(1, 99)[0],
        started.restriction(MemoryScope.USER, scope_id),
        Page(5),
        include_embedding=False,
        passages=False,
    )
    rows = await store.database.fetch_with_settings(
        "explain", Query("EXPLAIN " + statement.sql, statement.args), {"enable_seqscan": "off"}
    )
    return "\n".join(row[0] for row in rows)


@pytest.fixture
async def store(make_config: Any) -> Any:
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(DIMENSION)) as storage:
        for owner, count, seed in (("big o'brien ü", 300, 1), ("small", 40, 2)):
            vectors = _vectors(count, seed)
            await storage.store_many(
                [
                    {"key": f"k{i}", "value": i, "text": f"note {i}", "embedding": vectors[i]}
                    for i in range(count)
                ],
                scope=MemoryScope.USER,
                scope_id=owner,
            )
        yield storage


async def test_an_owners_index_serves_its_searches_and_no_one_elses(store: Any) -> None:
    big = "big o'brien ü"  # any owner id: the index's predicate quotes it
    query = MemoryQuery(
        embedding=_vectors(1, 99)[0].tolist(), index_type=MemoryIndex.SEMANTIC, limit=5,
        scope=MemoryScope.USER, scope_id=big,
    )  # fmt: skip
    before = [hit.entry.key for hit in await store.search(query)]
    assert await store.index_owner(MemoryScope.USER, big) is True
    assert await store.index_owner("user", big) is True  # again: nothing to do
    name = store.layout.owner_index_name("", "user", big)
    # (On a cluster EXPLAIN shows the coordinator's plan of a worker's query with parameters:
    # there the results and the index's life are checked, not the plan.)
    planned = not store.layout.distributed
    if planned:
        assert name in await _plan(store, big)
        assert name not in await _plan(store, "small")
    assert [hit.entry.key for hit in await store.search(query)] == before
    await store.store("late", "a later note", scope=MemoryScope.USER, scope_id=big,
                      embedding=_vectors(1, 99)[0])  # fmt: skip
    assert (await store.search(query))[0].entry.key == "late"  # writes reach the index

    assert await store.drop_owner_index(MemoryScope.USER, big) is True
    assert await store.drop_owner_index(MemoryScope.USER, big) is False
    if planned:
        assert name not in await _plan(store, big)
    assert (await store.search(query))[0].entry.key == "late"


async def test_an_owners_index_needs_an_owner(store: Any) -> None:
    with pytest.raises(MemoryValidationError):
        await store.index_owner(None)
