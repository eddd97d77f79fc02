"""Measurements of pepperpy-pg-memory itself."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from pepperpy_pg_memory import (
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    PostgresConfig,
    PostgresStorage,
)

from .corpus import Memory
from .measure import Measurement, latencies, latency_row, rate_row, timed

SYSTEM = "pepperpy-pg-memory"


def items(memories: list[Memory]) -> list[dict[str, Any]]:
    return [
        {
            "key": m.key,
            "value": {"content": m.text},
            "scope": MemoryScope.USER,
            "scope_id": m.user,
            "metadata": {"topic": m.topic, "priority": m.priority},
        }
        for m in memories
    ]


async def insert_rows(
    config: PostgresConfig, embedder: Any, memories: list[Memory], mode: str, name: str
) -> Measurement:
    """One store_many of all ``memories`` into a fresh table."""
    async with PostgresStorage[str, Any](config, embedder) as store:
        await store.clear()
        batch = items(memories)
        seconds = await timed(lambda: store.store_many(batch))
        assert await store.count() == len(memories)
        await store.clear()
    return rate_row(name, SYSTEM, mode, len(memories), len(memories), seconds)


async def storage_suite(
    config: PostgresConfig,
    embedder: Any,
    memories: list[Memory],
    questions: list[str],
    keywords: list[str],
    vectors: npt.NDArray[np.float32],
    question_vectors: npt.NDArray[np.float32],
    progress: Callable[[str], None],
) -> list[Measurement]:
    """Every storage-side row at one size: vectors come precomputed through ``embedder``."""
    size = len(memories)
    mode = "storage"
    rows: list[Measurement] = []
    rng = random.Random(size)
    async with PostgresStorage[str, Any](config, embedder) as store:
        await store.clear()
        batch = items(memories)
        progress(f"insert {size}")
        seconds = await timed(lambda: store.store_many(batch))
        rows.append(rate_row("batch_insert", SYSTEM, mode, size, size, seconds))

        progress(f"semantic search at {size}")
        samples = await latencies(
            [lambda q=q: store.search(MemoryQuery(query=q, limit=10)) for q in questions]
        )
        rows.append(latency_row("semantic_search", SYSTEM, mode, size, samples))

        progress(f"raw pgvector floor at {size}")
        rows.append(await raw_floor_row(store, size, question_vectors))

        progress(f"recall@10 at {size}")
        rows.append(await recall_row(store, memories, vectors, questions, question_vectors))
        progress(f"ef_search sweep at {size}")
        rows.extend(
            await ef_search_sweep(config, embedder, memories, vectors, questions, question_vectors)
        )

        progress(f"full-text search at {size}")
        samples = await latencies(
            [
                lambda q=q: store.search(
                    MemoryQuery(query=q, index_type=MemoryIndex.CONTEXTUAL, limit=10)
                )
                for q in keywords
            ]
        )
        rows.append(latency_row("fulltext_search", SYSTEM, mode, size, samples))

        progress(f"hybrid search at {size}")
        samples = await latencies(
            [
                lambda q=q: store.search(
                    MemoryQuery(query=q, index_type=MemoryIndex.HYBRID, limit=10)
                )
                for q in questions
            ]
        )
        rows.append(latency_row("hybrid_search", SYSTEM, mode, size, samples))

        progress(f"filtered search at {size}")
        users = sorted({m.user for m in memories})
        owners = [rng.choice(users) for _ in questions]
        samples = await latencies(
            [
                lambda q=q, u=u: store.search(
                    MemoryQuery(
                        query=q,
                        limit=10,
                        scope=MemoryScope.USER,
                        scope_id=u,
                        filter={"priority": {"$gte": 5}},
                    )
                )
                for q, u in zip(questions, owners, strict=True)
            ]
        )
        rows.append(latency_row("filtered_search", SYSTEM, mode, size, samples))

        keys = [m.key for m in memories]
        progress(f"similar at {size}")
        probes = [rng.choice(keys) for _ in questions]
        samples = await latencies([lambda k=k: store.similar(k, limit=10) for k in probes])
        rows.append(latency_row("similar", SYSTEM, mode, size, samples))

        progress(f"retrieve at {size}")
        lookups = [rng.choice(keys) for _ in range(500)]
        samples = await latencies([lambda k=k: store.retrieve(k) for k in lookups])
        rows.append(latency_row("retrieve", SYSTEM, mode, size, samples))

        progress(f"concurrent clients at {size}")
        rows.append(await concurrency_row(store, memories, questions, rng))

        progress(f"reindex at {size}")
        seconds = await timed(lambda: store.reindex(MemoryIndex.SEMANTIC, resume=False))
        rows.append(rate_row("reindex_semantic", SYSTEM, mode, size, size, seconds))
        seconds = await timed(lambda: store.reindex(MemoryIndex.CONTEXTUAL))
        rows.append(rate_row("reindex_fulltext", SYSTEM, mode, size, size, seconds))

        progress(f"cleanup_expired at {size}")
        await expire_half(store)
        started = time.perf_counter()
        deleted = await store.cleanup_expired()
        rows.append(
            rate_row("cleanup_expired", SYSTEM, mode, size, deleted, time.perf_counter() - started)
        )
        await store.clear()
    return rows


RAW_FLOOR = "raw pgvector (prepared statement)"


async def raw_floor_row(
    store: PostgresStorage[str, Any], size: int, question_vectors: npt.NDArray[np.float32]
) -> Measurement:
    """The floor under our semantic search: the bare HNSW query a hand-written client would
    run, prepared once, on one of our pool's connections (the same ef_search and codecs), on
    the same table and vectors; it returns keys only and decodes nothing else."""
    layout = store.layout
    sql = (
        f"SELECT key FROM {layout.qualified_table} "
        f"ORDER BY embedding <=> $1::{layout.vector_column_type} LIMIT 10"
    )
    async with store.database.pool.acquire() as conn:
        statement = await conn.prepare(sql)
        samples = await latencies([lambda v=v: statement.fetch(v) for v in question_vectors])
    return latency_row("semantic_search", RAW_FLOOR, "storage", size, samples)


async def expire_half(store: PostgresStorage[str, Any]) -> None:
    layout = store.layout
    async with store.database.pool.acquire() as conn:
        # Setup, not measured: each updated row is a new tuple in every index, HNSW included,
        # which takes minutes at 100k rows.
        await conn.execute(
            f"UPDATE {layout.qualified_table} SET expires_at = now() - interval '1 second' "
            "WHERE right(key, 1) IN ('0', '2', '4', '6', '8')",
            timeout=3600,
        )


async def recall_row(
    store: PostgresStorage[str, Any],
    memories: list[Memory],
    vectors: npt.NDArray[np.float32],
    questions: list[str],
    question_vectors: npt.NDArray[np.float32],
) -> Measurement:
    """HNSW recall@10 against exact cosine search over the same vectors."""
    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    hits = 0
    for question, vector in zip(questions, question_vectors, strict=True):
        exact = np.argsort(-(normalised @ (vector / np.linalg.norm(vector))))[:10]
        expected = {memories[i].key for i in exact}
        found = {r.entry.key for r in await store.search(MemoryQuery(query=question, limit=10))}
        hits += len(expected & found)
    recall = hits / (10 * len(questions))
    config = store.config
    return Measurement(
        name="recall_at_10",
        system=SYSTEM,
        mode="storage",
        size=len(memories),
        unit="recall",
        throughput=recall,
        count=len(questions),
        extra={
            "hnsw_m": config.hnsw_m,
            "ef_construction": config.hnsw_ef_construction,
            "ef_search": config.hnsw_ef_search,
        },
    )


EF_SEARCH_SWEEP = (40, 100, 200)
"""pgvector's default (40), ours (100) and double ours: the trade the default was chosen on."""


async def ef_search_sweep(
    config: PostgresConfig,
    embedder: Any,
    memories: list[Memory],
    vectors: npt.NDArray[np.float32],
    questions: list[str],
    question_vectors: npt.NDArray[np.float32],
) -> list[Measurement]:
    """Recall@10 and search latency over the same loaded table at each ``hnsw_ef_search``."""
    rows = []
    for ef_search in EF_SEARCH_SWEEP:
        swept = config.model_copy(update={"hnsw_ef_search": ef_search})
        async with PostgresStorage[str, Any](swept, embedder) as store:
            samples = await latencies(
                [lambda q=q: store.search(MemoryQuery(query=q, limit=10)) for q in questions]
            )
            recall = await recall_row(store, memories, vectors, questions, question_vectors)
        timing = latency_row(
            "ef_search_sweep", SYSTEM, "storage", len(memories), samples, **recall.extra
        )
        rows.append(replace(timing, unit="recall", throughput=recall.throughput))
    return rows


async def concurrency_row(
    store: PostgresStorage[str, Any],
    memories: list[Memory],
    questions: list[str],
    rng: random.Random,
    clients: int = 50,
    operations_per_client: int = 40,
) -> Measurement:
    """50 clients at once, each a mix of 60% searches, 20% retrieves and 20% writes."""
    samples: list[float] = []

    async def client(number: int) -> None:
        local = random.Random(number)
        for op in range(operations_per_client):
            roll = local.random()
            started = time.perf_counter()
            if roll < 0.6:
                await store.search(MemoryQuery(query=local.choice(questions), limit=10))
            elif roll < 0.8:
                await store.retrieve(local.choice(memories).key)
            else:
                memory = local.choice(memories)
                await store.store(
                    f"c{number}-{op}",
                    {"content": memory.text},
                    scope=MemoryScope.USER,
                    scope_id=memory.user,
                )
            samples.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    seconds = time.perf_counter() - started
    values = np.asarray(samples)
    return Measurement(
        name="concurrent_50_clients",
        system=SYSTEM,
        mode="storage",
        size=len(memories),
        unit="ops/s",
        throughput=len(samples) / seconds,
        p50_ms=float(np.percentile(values, 50)),
        p95_ms=float(np.percentile(values, 95)),
        count=len(samples),
        extra={"clients": clients, "pool_max_size": store.config.max_size},
    )


async def end_to_end_suite(
    config: PostgresConfig,
    model: Any,
    memories: list[Memory],
    fresh_questions: list[str],
    progress: Callable[[str], None],
) -> list[Measurement]:
    """Rows with the real model in the loop: insert vs the model's own speed, and search."""
    size = len(memories)
    mode = "end_to_end"
    rows: list[Measurement] = []
    texts = [m.text for m in memories]
    progress(f"model alone on {size} texts")
    batch_size = config.embedding_batch_size
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        await model.embed_documents(texts[start : start + batch_size])
    model_seconds = time.perf_counter() - started
    model_rate = size / model_seconds
    rows.append(rate_row("model_embed_only", "all-MiniLM-L6-v2", mode, size, size, model_seconds))

    progress(f"end-to-end insert {size}")
    async with PostgresStorage[str, Any](config, model) as store:
        await store.clear()
        store.embedding_cache.clear()
        batch = items(memories)
        seconds = await timed(lambda: store.store_many(batch))
        row = rate_row("batch_insert", SYSTEM, mode, size, size, seconds)
        row.extra["share_of_model_throughput"] = row.throughput / model_rate
        rows.append(row)

        progress(f"end-to-end semantic search at {size}")
        samples = await latencies(
            [lambda q=q: store.search(MemoryQuery(query=q, limit=10)) for q in fresh_questions],
            warmup=0,
        )
        rows.append(latency_row("semantic_search", SYSTEM, mode, size, samples))

        progress(f"end-to-end reindex at {size}")
        seconds = await timed(lambda: store.reindex(MemoryIndex.SEMANTIC, resume=False))
        rows.append(rate_row("reindex_semantic", SYSTEM, mode, size, size, seconds))
        await store.clear()
    return rows
