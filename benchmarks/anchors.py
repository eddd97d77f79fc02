"""The stores a user would pick instead, measured in the same run on the same database and
vectors: langchain-postgres' PGVectorStore (async, v2) and LangGraph's AsyncPostgresStore.

Both get an HNSW cosine index like ours. langchain-postgres is timed the way its docs suggest
loading data: insert, then ``aapply_vector_index`` (the time includes the index build).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .corpus import Memory
from .embedders import langchain_embeddings
from .measure import Measurement, latencies, latency_row, rate_row, timed

LANGCHAIN = "langchain-postgres PGVectorStore"
LANGGRAPH = "langgraph AsyncPostgresStore"


def _sqlalchemy_url(libpq_url: str) -> str:
    return libpq_url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def langchain_postgres_suite(
    url: str,
    table: dict[str, npt.NDArray[np.float32]],
    memories: list[Memory],
    questions: list[str],
    question_vectors: npt.NDArray[np.float32],
    progress: Callable[[str], None],
) -> list[Measurement]:
    from langchain_postgres import PGEngine
    from langchain_postgres.v2.async_vectorstore import AsyncPGVectorStore
    from langchain_postgres.v2.indexes import HNSWIndex, HNSWQueryOptions
    from sqlalchemy.ext.asyncio import create_async_engine

    size = len(memories)
    dimension = len(question_vectors[0])
    engine = PGEngine.from_engine(create_async_engine(_sqlalchemy_url(url)))
    name = f"lc_{uuid.uuid4().hex[:8]}"
    rows: list[Measurement] = []
    try:
        await engine.ainit_vectorstore_table(name, dimension)
        store = await AsyncPGVectorStore.create(
            engine,
            langchain_embeddings(table),
            name,
            index_query_options=HNSWQueryOptions(ef_search=100),
        )
        texts = [m.text for m in memories]
        vectors = [table[t].tolist() for t in texts]
        metadatas = [{"user": m.user, "topic": m.topic, "priority": m.priority} for m in memories]
        ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, m.key)) for m in memories]

        async def load() -> None:
            await store.aadd_embeddings(texts, vectors, metadatas=metadatas, ids=ids)
            await store.aapply_vector_index(HNSWIndex(m=16, ef_construction=64))

        progress(f"{LANGCHAIN}: insert {size}")
        seconds = await timed(load)
        rows.append(rate_row("batch_insert", LANGCHAIN, "storage", size, size, seconds))
        progress(f"{LANGCHAIN}: semantic search at {size}")
        samples = await latencies(
            [
                lambda v=v: store.asimilarity_search_by_vector(v.tolist(), k=10)
                for v in question_vectors
            ]
        )
        rows.append(latency_row("semantic_search", LANGCHAIN, "storage", size, samples))
    finally:
        async with engine._pool.connect() as conn:
            from sqlalchemy import text

            await conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
            await conn.commit()
        await engine.close()
    return rows


async def langgraph_suite(
    url: str,
    table: dict[str, npt.NDArray[np.float32]],
    memories: list[Memory],
    questions: list[str],
    progress: Callable[[str], None],
) -> list[Measurement]:
    from langgraph.store.base import PutOp

    size = len(memories)
    dimension = len(next(iter(table.values())))

    def embed(texts: list[str]) -> list[list[float]]:
        return [table[t].tolist() for t in texts]

    rows: list[Measurement] = []
    async with langgraph_store(url, dimension, embed) as store:
        ops = [
            PutOp(
                namespace=("users", m.user),
                key=m.key,
                value={"text": m.text, "topic": m.topic, "priority": m.priority},
            )
            for m in memories
        ]

        async def load() -> None:
            for start in range(0, len(ops), 1000):
                await store.abatch(ops[start : start + 1000])

        progress(f"{LANGGRAPH}: insert {size}")
        seconds = await timed(load)
        rows.append(rate_row("batch_insert", LANGGRAPH, "storage", size, size, seconds))
        progress(f"{LANGGRAPH}: semantic search at {size}")
        samples = await latencies(
            [lambda q=q: store.asearch(("users",), query=q, limit=10) for q in questions]
        )
        rows.append(latency_row("semantic_search", LANGGRAPH, "storage", size, samples))
    return rows


@contextlib.asynccontextmanager
async def langgraph_store(
    url: str, dimension: int, embed: Any, ttl: Any = None
) -> AsyncIterator[Any]:
    """LangGraph's AsyncPostgresStore with an HNSW cosine index like ours (m 16,
    ef_construction 64) on ``text``, a pool of 10 (and ``ttl``, its TTLConfig), emptied
    before and after use."""
    from langgraph.store.postgres.aio import AsyncPostgresStore

    index: Any = {
        "dims": dimension,
        "embed": embed,
        "fields": ["text"],
        "distance_type": "cosine",
        "ann_index_config": {"kind": "hnsw", "m": 16, "ef_construction": 64},
    }
    async with AsyncPostgresStore.from_conn_string(
        url, index=index, pool_config={"min_size": 1, "max_size": 10}, ttl=ttl
    ) as store:
        await store.setup()
        async with store.conn.connection() as conn:  # type: ignore[union-attr]
            await conn.execute("TRUNCATE store, store_vectors")
        try:
            yield store
        finally:
            async with store.conn.connection() as conn:  # type: ignore[union-attr]
                await conn.execute("TRUNCATE store, store_vectors")
